"""The Fréchet distance between two Gaussians fitted to Inception features (Heusel et al., 2017).

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))

The hard part is tr(sqrt(S1 S2)). The usual `scipy.linalg.sqrtm(S1 @ S2)`
takes the square root of a non-symmetric matrix by a Schur decomposition; with
covariances of fewer samples than dimensions (rank-deficient, the normal case
for a few hundred images in 2048-d) it returns complex parts and NaNs that
implementations then patch over with an epsilon. Here S1 S2 is never formed:
with S1 = F F^T (F its Cholesky factor, or its symmetric square root when S1
is singular) it is similar to the symmetric positive semi-definite matrix
F^T S2 F, so both have the same eigenvalues, and Cholesky factorisations and
symmetric eigendecompositions are backward stable. Everything runs in float64 and
eigenvalues that rounding pushes below zero are clipped to zero.
"""

from __future__ import annotations

import numpy as np

from animegan.metrics.feature_set import FeatureStatistics


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix, via its eigendecomposition."""
    values, vectors = np.linalg.eigh(_symmetrised(matrix))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(first: np.ndarray, second: np.ndarray) -> float:
    """tr(sqrt(first @ second)) for symmetric PSD matrices.

    With A = F F^T, A B is similar to F^T B F (symmetric PSD), so both have the
    same eigenvalues. F is A's Cholesky factor when A is positive definite (a
    covariance of more images than dimensions; several times cheaper than an
    eigendecomposition at 2048-d), and A's symmetric square root otherwise.
    tr(sqrt(AB)) = tr(sqrt(BA)), so either matrix can play A.
    """
    first, second = _square_pair(first, second)
    first, second = _symmetrised(first), _symmetrised(second)
    for factored, other in [(first, second), (second, first)]:
        try:
            factor = np.linalg.cholesky(factored)
            break
        except np.linalg.LinAlgError:
            continue
    else:
        factor, other = symmetric_sqrt(first), second
    eigenvalues = np.linalg.eigvalsh(_symmetrised(factor.T @ other @ factor))
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """FID between two fitted Gaussians; 0 for identical statistics (never negative)."""
    mean_first, mean_second = np.asarray(first.mean, np.float64), np.asarray(second.mean, np.float64)
    if mean_first.shape != mean_second.shape:
        raise ValueError(f"feature dimensions differ: {mean_first.shape} and {mean_second.shape}")
    covariance_first, covariance_second = _square_pair(first.covariance, second.covariance)
    if covariance_first.shape[0] != mean_first.shape[0]:
        raise ValueError(f"covariance {covariance_first.shape} does not match the mean {mean_first.shape}")
    difference = mean_first - mean_second
    distance = (difference @ difference + np.trace(covariance_first) + np.trace(covariance_second)
                - 2.0 * trace_sqrt_product(covariance_first, covariance_second))
    # Mathematically >= 0; a negative value can only be rounding (of the order of 1e-12 x the traces).
    return max(float(distance), 0.0)


def _square_pair(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    for name, matrix in [("first", first), ("second", second)]:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"the {name} covariance must be a square matrix, got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError(f"the {name} covariance contains NaN or infinite values")
    if first.shape != second.shape:
        raise ValueError(f"covariance shapes differ: {first.shape} and {second.shape}")
    return first, second


def _symmetrised(matrix: np.ndarray) -> np.ndarray:
    # Products like root @ S @ root are symmetric in exact arithmetic only; eigh reads one triangle.
    return (matrix + matrix.T) / 2.0
