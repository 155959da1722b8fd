"""The Kernel Inception Distance (Bińkowski et al., 2018): an unbiased MMD^2 with a cubic polynomial kernel.

    k(x, y) = (x . y / d + 1)^3

Unlike FID, the estimate is unbiased at any sample size, so KID from a few
hundred images already means what KID from 50,000 means (only noisier); its
expectation is 0 when both sets come from the same distribution, so small
negative values are normal. It is estimated on `num_subsets` random subsets of
`subset_size` images from each side; the mean is reported together with the
standard deviation of the subset estimates (the standard error of one subset's
estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animegan.metrics.feature_set import check_features

DEFAULT_SUBSETS = 100
DEFAULT_MAX_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class KernelDistance:
    mean: float
    std: float  # standard deviation over subsets
    subset_size: int
    num_subsets: int


def polynomial_kernel(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for every pair of rows, in float64."""
    dimensions = first.shape[1]
    return (first @ second.T / dimensions + 1.0) ** 3


def unbiased_mmd2(kernel_xx: np.ndarray, kernel_yy: np.ndarray, kernel_xy: np.ndarray) -> float:
    """MMD^2 from kernel matrices of two equal-sized samples, leaving out the k(x_i, x_i) terms."""
    m = kernel_xx.shape[0]
    within_x = (kernel_xx.sum() - np.trace(kernel_xx)) / (m * (m - 1))
    within_y = (kernel_yy.sum() - np.trace(kernel_yy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kernel_xy.mean())


def subset_size_for(first_count: int, second_count: int, max_subset_size: int = DEFAULT_MAX_SUBSET_SIZE) -> int:
    """At most max_subset_size and at most half the smaller set, so the subsets differ and their spread means something."""
    return min(max_subset_size, min(first_count, second_count) // 2)


def kernel_inception_distance(
    first: np.ndarray,
    second: np.ndarray,
    *,
    num_subsets: int = DEFAULT_SUBSETS,
    max_subset_size: int = DEFAULT_MAX_SUBSET_SIZE,
    seed: int = 0,
) -> KernelDistance:
    """KID between two sets of feature vectors [N, d] and [M, d] (N and M may differ)."""
    first = check_features(first, "the first features").astype(np.float64)
    second = check_features(second, "the second features").astype(np.float64)
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"feature dimensions differ: {first.shape[1]} and {second.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"KID needs at least one subset, got num_subsets={num_subsets}")
    subset_size = subset_size_for(len(first), len(second), max_subset_size)
    if subset_size < 2:
        raise ValueError(f"KID needs at least 4 images on each side, got {len(first)} and {len(second)}")

    rng = np.random.default_rng(seed)
    picks = [(rng.choice(len(first), subset_size, replace=False), rng.choice(len(second), subset_size, replace=False))
             for _ in range(num_subsets)]
    # Whole kernel matrices once, when that is cheaper than one product per subset (small sets, as during training).
    whole = len(first) ** 2 + len(second) ** 2 + len(first) * len(second) <= 3 * num_subsets * subset_size ** 2
    if whole:
        kernel_xx, kernel_yy = polynomial_kernel(first, first), polynomial_kernel(second, second)
        kernel_xy = polynomial_kernel(first, second)
        estimates = [unbiased_mmd2(kernel_xx[np.ix_(x, x)], kernel_yy[np.ix_(y, y)], kernel_xy[np.ix_(x, y)])
                     for x, y in picks]
    else:
        estimates = []
        for x, y in picks:
            subset_x, subset_y = first[x], second[y]
            estimates.append(unbiased_mmd2(polynomial_kernel(subset_x, subset_x), polynomial_kernel(subset_y, subset_y),
                                           polynomial_kernel(subset_x, subset_y)))
    values = np.asarray(estimates)
    return KernelDistance(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                          subset_size, num_subsets)
