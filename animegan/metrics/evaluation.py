"""Evaluating a generator: its images' features against a reference set of real images' features.

Shared by evaluation during training (during_training.py) and `animegan eval`.
Generated images come from `animegan.generation` (image i from noise (seed, i)
only), so the same generator, seed and count always give the same images, and
a training-time evaluation can be repeated exactly from the command line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from animegan.metrics import compute_metrics
from animegan.metrics.feature_set import FeatureSet
from animegan.metrics.features import InceptionExtractor
from animegan.metrics.real_stats import real_features

ALL_METRICS = ("fid", "kid", "inception_score")


@dataclass(frozen=True)
class Reference:
    """The real images generated images are compared with, and how to describe them."""

    source_url: str
    items: tuple[str, ...]
    label: str  # e.g. "500 held-out images of /data/faces.zip (never trained on)"


def sample_items(items: Sequence[str], count: int | None, seed: int) -> list[str]:
    """`count` items chosen by seed (all when count is None or too large), in listing order."""
    if count is None or count >= len(items):
        return list(items)
    chosen = np.sort(np.random.default_rng([seed, 0xE7A1]).permutation(len(items))[:count])
    return [items[index] for index in chosen]


class Evaluator:
    """One extractor and one reference set; the reference features are computed (or loaded) once."""

    def __init__(self, extractor: InceptionExtractor, reference: Reference, cache_dir: str | None,
                 log: Callable[[str], None] = print):
        self.extractor = extractor
        self.reference = reference
        self.cache_dir = cache_dir
        self.log = log
        self._reference_features: FeatureSet | None = None

    def real_features(self, source_url: str, items: Sequence[str]) -> FeatureSet:
        from animegan.data.sources import open_source

        return real_features(open_source(source_url), items, self.extractor, self.cache_dir, self.log)

    def reference_features(self) -> FeatureSet:
        if self._reference_features is None:
            self._reference_features = self.real_features(self.reference.source_url, self.reference.items)
        return self._reference_features

    def generator_features(self, generator, count: int, seed: int = 0, batch_size: int = 64) -> FeatureSet:
        """Features of `count` images of a LoadedGenerator (see animegan.generation)."""
        from animegan.generation import generate_images

        images = generate_images(generator, seed, range(count), batch_size)
        return self.extractor.extract(images, log=self.log)

    def scores(self, features: FeatureSet, metrics: Iterable[str] = ALL_METRICS) -> dict[str, float | None]:
        return compute_metrics(metrics, features, self.reference_features())

    def evaluate_generator(self, generator, count: int, seed: int = 0,
                           metrics: Iterable[str] = ALL_METRICS) -> dict[str, float | None]:
        """Scores of `count` generated images, with the time taken (seconds) under "seconds"."""
        reference = self.reference_features()  # the first time, outside the timing: it is cached after
        started = time.perf_counter()
        scores = compute_metrics(metrics, self.generator_features(generator, count, seed), reference)
        return {**scores, "seconds": time.perf_counter() - started}


def choose_reference(data_url: str, index, num_real: int | None = None,
                     seed: int = 0) -> tuple[Reference, list[str]]:
    """The real images to compare with, and real images outside them (for a real-vs-real baseline).

    With a workdir's DataIndex of the same source that has a held-out split,
    the reference is that split (never trained on) and the training images are
    the others; otherwise it is the images at `data_url` (or `num_real` of them).
    """
    from animegan import storage
    from animegan.data.sources import list_images, open_source

    data_url = storage.absolute(data_url)
    same_source = index is not None and storage.redact(index.source) == storage.redact(data_url)
    if same_source and index.holdout:
        items = sample_items(index.holdout, num_real, seed)
        return (Reference(data_url, tuple(items), f"{len(items)} held-out images of {data_url} (never trained on)"),
                list(index.items))
    listing = list_images(open_source(data_url))
    chosen = sample_items(listing, num_real, seed)
    chosen_set = set(chosen)
    others = [item for item in listing if item not in chosen_set]
    note = " (the run trained on them: it has no held-out split)" if same_source else ""
    return Reference(data_url, tuple(chosen), f"{len(chosen)} images of {data_url}{note}"), others
