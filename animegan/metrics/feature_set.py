"""Inception features of one set of images, and their Gaussian statistics in float64.

A FeatureSet is what every metric consumes: FID uses the statistics (mean and
covariance of the 2048-d pool features), KID the features themselves, and the
Inception Score the classifier logits. Sets are saved as .npz files (read back
with allow_pickle=False, so a shared cache cannot run code).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from animegan import storage


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean [d] and covariance [d, d] of features, in float64."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStatistics":
        features = check_features(features, "features")
        if len(features) < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(features)}")
        # float64 before any arithmetic: sums of thousands of 2048-d rows lose digits in float32.
        values = features.astype(np.float64)
        return cls(values.mean(axis=0), np.cov(values, rowvar=False), len(values))


@dataclass
class FeatureSet:
    """Pool features (float32 [N, 2048]) and, when the extractor has its classifier, logits [N, 1000]."""

    pool: np.ndarray
    logits: np.ndarray | None
    extractor: str  # the extractor's label, e.g. "random-seed0 (not comparable with published FID)"
    _statistics: FeatureStatistics | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.pool)

    def statistics(self) -> FeatureStatistics:
        if self._statistics is None:
            self._statistics = FeatureStatistics.of(self.pool)
        return self._statistics

    def to_bytes(self, key: str) -> bytes:
        statistics = self.statistics()
        arrays = {"pool": self.pool, "mean": statistics.mean, "covariance": statistics.covariance,
                  "key": np.array(key), "extractor": np.array(self.extractor)}
        if self.logits is not None:
            arrays["logits"] = self.logits
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple["FeatureSet", str]:
        """The set and the cache key it was saved under."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            pool = arrays["pool"]
            logits = arrays["logits"] if "logits" in arrays else None
            statistics = FeatureStatistics(arrays["mean"], arrays["covariance"], len(pool))
            return cls(pool, logits, str(arrays["extractor"]), statistics), str(arrays["key"])

    def save(self, url: str, key: str) -> None:
        storage.write_bytes(url, self.to_bytes(key))


def check_features(features: np.ndarray, name: str) -> np.ndarray:
    """A finite 2-D array, or a ValueError that says what is wrong with it."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [count, dimensions], got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return features
