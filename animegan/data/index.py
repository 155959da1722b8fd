"""The listing of a data source, made once by the driver and read by every worker.

Kept in the workdir, so that a resumed run sees exactly the same items in the
same order, and its data position (epoch, items consumed) still means the same.
The stored source URL has its credentials redacted (storage.redact); whoever
opens the source passes the real URL to `load`.
A fraction of the items can be held out: `items` are the training items (all
that training ever reads) and `holdout` the real images kept for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from animegan import storage
from animegan.data.sources import list_images, open_source


@dataclass(frozen=True)
class DataIndex:
    source: str
    items: list[str]  # the training items
    holdout: list[str] = field(default_factory=list)  # never trained on; the evaluation's real images
    holdout_fraction: float = 0.0
    holdout_seed: int = 0

    def save(self, url: str) -> None:
        storage.write_text(url, json.dumps({**asdict(self), "source": storage.redact(self.source)}))

    @classmethod
    def load(cls, url: str, source: str | None = None) -> "DataIndex":
        """The stored index; `source` (the real URL, credentials and all) replaces the redacted one it matches."""
        index = cls(**json.loads(storage.read_text(url)))
        if source is not None and storage.redact(source) == index.source:
            index = replace(index, source=source)
        return index

    @classmethod
    def split(cls, source: str, listing: list[str], holdout_fraction: float = 0.0, seed: int = 0) -> "DataIndex":
        """Holds out round(fraction x N) items (at least one when the fraction is positive), chosen by seed.

        Both parts keep the listing's sorted order; which items are held out depends
        only on the listing and the seed, so every process computes the same split.
        """
        if not 0 <= holdout_fraction < 1:
            raise ValueError(f"--holdout-fraction must be in [0, 1), got {holdout_fraction}")
        if holdout_fraction == 0:
            return cls(source=source, items=list(listing))
        count = max(1, round(holdout_fraction * len(listing)))
        if count >= len(listing):
            raise ValueError(f"--holdout-fraction {holdout_fraction} of {len(listing)} images at {source} "
                             f"leaves no images to train on")
        # A separate stream from the data order's (seed, epoch) generators.
        held = np.sort(np.random.default_rng([seed, 0x401D]).permutation(len(listing))[:count])
        held_set = set(held.tolist())
        return cls(source=source, items=[item for index, item in enumerate(listing) if index not in held_set],
                   holdout=[listing[index] for index in held], holdout_fraction=holdout_fraction,
                   holdout_seed=seed)

    def same_split(self, holdout_fraction: float, seed: int) -> bool:
        if holdout_fraction == 0 or self.holdout_fraction == 0:
            return holdout_fraction == self.holdout_fraction
        return (holdout_fraction, seed) == (self.holdout_fraction, self.holdout_seed)


def index_for(source_url: str, index_url: str, holdout_fraction: float = 0.0, seed: int = 0) -> DataIndex:
    """The stored listing when it is of the same source; otherwise a fresh listing, stored.

    A stored listing of the same source split differently is an error rather than
    a silent re-split: the run may already have trained on images it would now hold out.
    """
    if storage.exists(index_url):
        stored = DataIndex.load(index_url, source=source_url)
        if stored.source == source_url:
            if not stored.same_split(holdout_fraction, seed):
                raise ValueError(
                    f"this workdir's data index holds out {stored.holdout_fraction} of the images "
                    f"(seed {stored.holdout_seed}); resuming with --holdout-fraction {holdout_fraction} "
                    f"(seed {seed}) would mix trained-on and held-out images. Use --holdout-fraction "
                    f"{stored.holdout_fraction}{f' --seed {stored.holdout_seed}' if stored.holdout_fraction else ''}, "
                    f"or a new --workdir")
            return stored
    index = DataIndex.split(source_url, list_images(open_source(source_url)), holdout_fraction, seed)
    index.save(index_url)
    return index
