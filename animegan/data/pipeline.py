"""The per-worker training pipeline: shard, shuffle, read, decode, batch, augment, prefetch.

The job shards the data itself (by Ray Train rank), so tf.data's own
auto-sharding is switched off: left on, each worker would see a fraction of a
fraction. Every worker gets the same number of items per epoch, which keeps the
workers' steps, and so their collective ops, in lock step.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from animegan.data.augment import Augmentation, augment_batch
from animegan.data.decode import decode_image, problem_with
from animegan.data.sources import ImageSource

logger = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """Counts of images read and skipped by one worker's pipeline (updated from tf.data's thread)."""

    read: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def skip(self, item: str, reason: str) -> None:
        with self.lock:
            self.skipped += 1
            if len(self.examples) < 5:
                self.examples.append(f"{item}: {reason}")
        logger.warning("skipping unreadable image %s: %s", item, reason)


@dataclass(frozen=True)
class DataPosition:
    """Where in the data a worker starts: the epoch and how many of its items to skip in it."""

    epoch: int = 0
    skip_items: int = 0


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The global order of items in an epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def items_per_worker(num_items: int, world_size: int) -> int:
    return num_items // world_size


def worker_shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This worker's disjoint, equal-length slice of an epoch's order (the remainder rotates)."""
    count = items_per_worker(len(order), world_size)
    return order[rank * count:(rank + 1) * count]


def encoded_images(
    source: ImageSource,
    items: Sequence[str],
    *,
    rank: int,
    world_size: int,
    seed: int,
    position: DataPosition = DataPosition(),
    stats: ReadStats | None = None,
    repeat: bool = True,
) -> Iterator[bytes]:
    """Encoded bytes of this worker's items, epoch after epoch, skipping unreadable ones."""
    stats = stats if stats is not None else ReadStats()
    epoch = position.epoch
    skip = position.skip_items
    while True:
        shard = worker_shard(epoch_order(len(items), seed, epoch), rank, world_size)[skip:]
        for item, data in source.read([items[index] for index in shard]):
            if isinstance(data, Exception):
                stats.skip(item, f"read failed: {type(data).__name__}: {data}")
                continue
            problem = problem_with(data)
            if problem:
                stats.skip(item, problem)
                continue
            stats.read += 1
            yield data
        if not repeat:
            return
        epoch, skip = epoch + 1, 0


def training_dataset(
    source: ImageSource,
    items: Sequence[str],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    augmentation: Augmentation = Augmentation(),
    position: DataPosition = DataPosition(),
    stats: ReadStats | None = None,
    repeat: bool = True,
) -> tf.data.Dataset:
    """Batches of float32 [batch_size, 64, 64, 3] images in [-1, 1] for one worker."""
    if items_per_worker(len(items), world_size) < batch_size:
        raise ValueError(
            f"{len(items)} images cannot fill a batch of {batch_size} on each of {world_size} workers; "
            f"use a smaller --batch-size or more data"
        )
    stats = stats if stats is not None else ReadStats()

    # Listing, sharding and per-epoch shuffling happen in Python over item names;
    # only the bytes of this worker's own items are ever read.
    dataset = tf.data.Dataset.from_generator(
        lambda: encoded_images(source, items, rank=rank, world_size=world_size, seed=seed,
                               position=position, stats=stats, repeat=repeat),
        output_signature=tf.TensorSpec([], tf.string),
    )
    # Decoding is per image and CPU-bound: run it in parallel.
    dataset = dataset.map(decode_image, num_parallel_calls=tf.data.AUTOTUNE)
    # A file that passed the byte check but still fails to decode is dropped, not fatal.
    dataset = dataset.ignore_errors(log_warning=True)
    # Drop the remainder: every replica step needs a full, equal batch.
    dataset = dataset.batch(batch_size, drop_remainder=True)
    # Augment whole batches (one vectorised transform per batch), with a seed per batch.
    batch_seeds = tf.data.Dataset.random(seed=seed * 7919 + rank).batch(2, drop_remainder=True)
    dataset = tf.data.Dataset.zip((dataset, batch_seeds))
    dataset = dataset.map(
        lambda images, batch_seed: to_unit_range(augment_batch(images, batch_seed, augmentation)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], the generator's tanh range."""
    return images / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images -> uint8 [0, 255]."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)

