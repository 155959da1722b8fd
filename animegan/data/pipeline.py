"""The per-worker training pipeline: shard, shuffle, read, decode, batch, prefetch.

It hands uint8 pixels to the training step, which scales and augments them on
the accelerator (animegan/gan.py): the host only reads, decodes and batches.

The job shards the data itself (by Ray Train rank), so tf.data's own
auto-sharding is switched off: left on, each worker would see a fraction of a
fraction. Every worker gets the same number of items per epoch, which keeps the
workers' steps, and so their collective ops, in lock step; and the generator
runs epoch after epoch without end, so no worker ever runs out first.

Raw files are shuffled item by item. Packed shards are read whole, in order
(large sequential reads): the shards are shuffled per epoch, and the images
within a window of each worker's stream.

Each image is decoded once (animegan/data/pixel_cache.py): later epochs take its
pixels from the worker's cache and read no file; a pack of decoded pixels
(`data pack --decoded`) is never decoded at all. Either way the batches are the
same, pixel for pixel and in order, as the decoding pipeline's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from animegan import storage
from animegan.data.decode import ImageLimits, decode_image, problem_with
from animegan.data.pixel_cache import DECODED, IMAGE_BYTES, IMAGE_SHAPE, UNKNOWN, PixelCache
from animegan.data.sources import ImageSource, failure_reason

logger = logging.getLogger(__name__)

# Images of a packed stream shuffled together (about 7 MB of 64x64 JPEGs).
SHUFFLE_WINDOW = 2048
# Encoded images handed from Python to tf.data per call: one call per image costs
# more than decoding the image.
GENERATOR_CHUNK = 256
# Pixels (cached or from a decoded pack) handed over per call: 12.6 MB. Without
# decoding, each call's fixed cost is what limits the pipeline (256 gave half the rate).
PIXEL_CHUNK = 1024
# When set to a local folder, every worker appends "epoch<TAB>item<TAB>read|skipped"
# for each item it reads to items-rank<rank>.tsv there: a record of the sharding.
RECORD_VARIABLE = "ANIMEGAN_RECORD_ITEMS"


@dataclass
class ReadStats:
    """Counts of images read and skipped by one worker's pipeline (updated from tf.data's thread)."""

    read: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    # The error that ended the pipeline (a storage failure after every retry), if one did.
    failure: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def skip(self, item: str, reason: str) -> None:
        with self.lock:
            self.skipped += 1
            example = storage.redact(f"{item}: {reason}")  # an item can be a URL with credentials
            if len(self.examples) < 5 and example not in self.examples:  # each epoch meets it again
                self.examples.append(example)
        logger.warning("skipping unreadable image %s", example)


@dataclass(frozen=True)
class DataPosition:
    """Where in the data a worker starts: the epoch and how many of its items to skip in it."""

    epoch: int = 0
    skip_items: int = 0


def epoch_order(num_items: int, seed: int, epoch: int, runs: Sequence[int] | None = None) -> np.ndarray:
    """The global order of items in an epoch: a permutation that depends only on (seed, epoch, runs).

    Without `runs`, every item goes anywhere. With `runs` (lengths of consecutive
    groups of items, e.g. packed shards), the groups are shuffled but each stays
    whole and in order, so that it is read sequentially; the result is then rotated
    by a random offset, so that the boundaries between the workers' slices (and
    the remainder no worker gets) move from epoch to epoch, even with one shard.
    """
    rng = np.random.default_rng([seed, epoch])
    if runs is None:
        return rng.permutation(num_items)
    if sum(runs) != num_items:
        raise ValueError(f"runs of {sum(runs)} items in all cannot order {num_items} items")
    if num_items == 0:
        return np.arange(0)
    starts = np.cumsum([0, *runs[:-1]])
    order = np.concatenate([np.arange(starts[run], starts[run] + runs[run]) for run in rng.permutation(len(runs))])
    return np.roll(order, -int(rng.integers(num_items)))


def items_per_worker(num_items: int, world_size: int) -> int:
    return num_items // world_size


def worker_shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This worker's disjoint, equal-length slice of an epoch's order (the remainder rotates)."""
    count = items_per_worker(len(order), world_size)
    return order[rank * count:(rank + 1) * count]


# Stands for the bytes of an item the cache remembers as skipped (it is not read).
REMEMBERED_SKIP = object()


def _read_positions(source: ImageSource, items: Sequence[str], positions: np.ndarray,
                    cache: PixelCache | None, runs: bool = False) -> Iterator[tuple[object, object]]:
    """(position, bytes or error) of each item in order; instead of bytes, None for an item whose
    pixels the cache holds and REMEMBERED_SKIP for one it remembers as skipped: neither is read.

    With `runs`, consecutive items the cache holds come as one (array of positions, None):
    per-image Python work would cost more than handing their pixels over.
    """
    states = cache.states_of(positions) if cache is not None else np.zeros(len(positions), np.uint8)
    unread = positions[states == UNKNOWN]
    with contextlib.closing(source.read([items[position] for position in unread])) as results:
        start = 0
        for end in [*(np.flatnonzero(np.diff(states)) + 1).tolist(), len(positions)]:
            state = states[start]
            if runs and state == DECODED:
                yield positions[start:end], None
            else:
                for position in positions[start:end].tolist():
                    if state == UNKNOWN:
                        yield position, next(results)[1]
                    else:
                        yield position, None if state == DECODED else REMEMBERED_SKIP
            start = end


def _shard_reads(source: ImageSource, items: Sequence[str], shard: np.ndarray, skip: int,
                 window_size: int | None, seeds: tuple[int, ...],
                 cache: PixelCache | None = None) -> Iterator[tuple[int, "bytes | Exception | None"]]:
    """(position, data) of this worker's shard from position `skip`; shuffled within windows if window_size."""
    if not window_size:
        yield from _read_positions(source, items, shard[skip:], cache, runs=True)
        return
    # Whole windows are read (sequentially) and shuffled; resuming mid-window re-reads
    # that window and drops what was already consumed, so the order is exactly the same.
    first = skip // window_size
    with contextlib.closing(_read_positions(source, items, shard[first * window_size:], cache)) as results:
        for window_index in itertools.count(first):
            window = list(itertools.islice(results, window_size))
            if not window:
                return
            permutation = np.random.default_rng([*seeds, window_index]).permutation(len(window))
            start = skip - first * window_size if window_index == first else 0
            for index in permutation[start:]:
                yield window[index]


def encoded_images(source: ImageSource, items: Sequence[str], **options) -> Iterator[bytes]:
    """Encoded bytes of this worker's items, epoch after epoch, skipping unreadable ones and those
    above the limits (their size read from the header, before anything decodes them).

    Takes the keyword arguments of `shard_images` except `cache`.
    """
    for _, data in shard_images(source, items, **options):
        yield data


def shard_images(
    source: ImageSource,
    items: Sequence[str],
    *,
    rank: int,
    world_size: int,
    seed: int,
    position: DataPosition = DataPosition(),
    stats: ReadStats | None = None,
    repeat: bool = True,
    shuffle_window: int = SHUFFLE_WINDOW,
    recorded: bool = True,
    limits: ImageLimits = ImageLimits(),
    cache: PixelCache | None = None,
) -> Iterator[tuple[int, "bytes | None"]]:
    """(position in `items`, encoded bytes) of this worker's readable items, epoch after epoch, in
    the pipeline's order; bytes are None for an item whose pixels `cache` holds (it is not read),
    and a run of those may come as one (array of positions, None).

    Items the cache remembers as skipped are skipped again, with their reason,
    without being read. `recorded=False` keeps a side read (a preview) out of the
    item record that tests use to check what each worker's shard read.
    """
    stats = stats if stats is not None else ReadStats()
    runs = source.sequential_runs(items)
    record = _item_record(rank) if recorded else None
    epoch = position.epoch
    skip = position.skip_items
    try:
        while True:
            shard = worker_shard(epoch_order(len(items), seed, epoch, runs), rank, world_size)
            readable = 0
            window = shuffle_window if runs is not None else None
            for index, data in _shard_reads(source, items, shard, skip, window, (seed, epoch, rank), cache):
                if isinstance(index, np.ndarray):  # a run of images the cache holds: nothing to read or check
                    if record:
                        record.writelines(f"{epoch}\t{items[position]}\tread\n" for position in index.tolist())
                    stats.read += len(index)
                    readable += len(index)
                    yield index, None
                    continue
                item = items[index]
                if data is None:
                    problem = None
                elif data is REMEMBERED_SKIP:
                    problem = cache.skip_reason(index)
                elif isinstance(data, Exception):
                    problem = failure_reason(data)
                elif source.decoded:
                    problem = None if len(data) == IMAGE_BYTES else f"{len(data)} bytes, not one image's pixels"
                else:
                    problem = problem_with(data, limits)
                if record:
                    record.write(f"{epoch}\t{item}\t{'skipped' if problem else 'read'}\n")
                if problem:
                    # A read error may pass (a file restored); what the bytes themselves fail stays failed.
                    if cache is not None and isinstance(data, bytes):
                        cache.skip(index, problem)
                    stats.skip(item, problem)
                    continue
                stats.read += 1
                readable += 1
                yield index, data
            if readable == 0 and len(shard) > skip:
                # Without this, a worker whose every image is unreadable would loop for ever.
                raise ValueError(f"none of the {len(shard) - skip} images of worker {rank}'s share of "
                                 f"{source.url} could be read, e.g. {'; '.join(stats.examples[:3])}")
            if not repeat:
                return
            epoch, skip = epoch + 1, 0
    except Exception as error:
        # tf.data reports a generator's error only as a log line and an early end;
        # keep it, so that the training loop can raise it (see next_batch).
        stats.failure = error
        raise
    finally:
        if record:
            record.close()


def _item_record(rank: int):
    folder = os.environ.get(RECORD_VARIABLE)
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    return open(os.path.join(folder, f"items-rank{rank}.tsv"), "a", buffering=1, encoding="utf-8")


def _chunks(values: Iterator[bytes], size: int) -> Iterator[np.ndarray]:
    while chunk := list(itertools.islice(values, size)):
        yield np.array(chunk, dtype=object)


_NO_POSITIONS = np.zeros(0, np.int64)
_NO_BYTES = np.zeros(0, object)
_NO_PIXELS = np.zeros((0, *IMAGE_SHAPE), np.uint8)


def _cached_chunks(images: Iterator[tuple[object, "bytes | None"]], cache: PixelCache | None,
                   decoded: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(positions, encoded bytes, pixels) chunks in the stream's order, each either up to
    GENERATOR_CHUNK images to decode (no pixels) or up to PIXEL_CHUNK pixels (no positions or
    bytes): from the cache, or from a source of `decoded` pixels (kept in the cache as they pass)."""
    pending: list[tuple[object, "bytes | None"]] = []  # (a position or an array of them, data)
    count = 0

    def kind(data: "bytes | None") -> str:
        return "cached" if data is None else "pixels" if decoded else "encoded"

    def flush():
        nonlocal count
        positions = np.concatenate([np.asarray(position, np.int64).reshape(-1) for position, _ in pending])
        chunk_kind = kind(pending[0][1])
        if chunk_kind == "cached":
            chunk = (_NO_POSITIONS, _NO_BYTES, cache.pixels(positions))
        elif chunk_kind == "pixels":
            pixels = np.frombuffer(b"".join(data for _, data in pending), np.uint8).reshape(-1, *IMAGE_SHAPE)
            if cache is not None:
                cache.store(positions, pixels)
            chunk = (_NO_POSITIONS, _NO_BYTES, pixels)
        else:
            chunk = (positions, np.array([data for _, data in pending], dtype=object), _NO_PIXELS)
        pending.clear()
        count = 0
        return chunk

    for position, data in images:
        limit = GENERATOR_CHUNK if kind(data) == "encoded" else PIXEL_CHUNK
        if pending and kind(pending[0][1]) != kind(data):
            yield flush()
        run = position if isinstance(position, np.ndarray) else None
        while run is not None and len(run):
            if count == limit:
                yield flush()
            part, run = run[:limit - count], run[limit - count:]
            pending.append((part, None))
            count += len(part)
        if run is None:
            if count == limit:
                yield flush()
            pending.append((position, data))
            count += 1
    if pending:
        yield flush()


def _decoded_into(cache: PixelCache | None):
    """A tf.data map function that keeps a chunk's freshly decoded pixels in the cache and
    remembers the chunk's images that failed to decode as skipped."""

    def keep(requested: np.ndarray, positions: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        if cache is None:  # never called: a source of decoded pixels has nothing to decode
            return pixels
        cache.store(positions, pixels)
        for position in np.setdiff1d(requested, positions):
            cache.skip(int(position), "could not be decoded")
        return pixels

    def keep_chunk(requested: tf.Tensor, positions: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
        kept = tf.numpy_function(keep, [requested, positions, pixels], tf.uint8, stateful=True)
        return tf.ensure_shape(kept, [None, *IMAGE_SHAPE])

    return keep_chunk


def _decode_chunk(positions: tf.Tensor, encoded: tf.Tensor, pixels: tf.Tensor,
                  cache: PixelCache | None) -> tf.data.Dataset:
    """One chunk's images as one uint8 [n, 64, 64, 3] element (none when n would be 0): its cached
    pixels as they are, or its encoded images decoded in parallel and kept in the cache."""
    cached = tf.data.Dataset.from_tensors(pixels).filter(lambda images: tf.shape(images)[0] > 0)
    decoded = (tf.data.Dataset.from_tensor_slices((positions, encoded))
               .map(lambda position, data: (position, decode_image(data)), num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors(log_warning=True)
               # One call into Python per chunk keeps what was decoded; a chunk that all failed
               # keeps nothing and is simply decoded, and dropped, again next epoch.
               .batch(GENERATOR_CHUNK)
               .map(lambda decoded_positions, images: _decoded_into(cache)(positions, decoded_positions, images)))
    return cached.concatenate(decoded)


def training_dataset(
    source: ImageSource,
    items: Sequence[str],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    position: DataPosition = DataPosition(),
    stats: ReadStats | None = None,
    repeat: bool = True,
    recorded: bool = True,
    limits: ImageLimits = ImageLimits(),
    cache: PixelCache | None = None,
) -> tf.data.Dataset:
    """Batches of uint8 [batch_size, 64, 64, 3] images for one worker, not yet augmented.

    With a `cache` (animegan/data/pixel_cache.py; one for `items`), an image is
    decoded once: later epochs take its pixels from the cache instead of reading
    and decoding its file. The batches are the same with or without it.
    """
    if items_per_worker(len(items), world_size) < batch_size:
        raise ValueError(
            f"{len(items)} images cannot fill a batch of {batch_size} on each of {world_size} workers; "
            f"use a smaller --batch-size or more data"
        )
    if cache is not None and cache.count != len(items):
        raise ValueError(f"a pixel cache of {cache.count} images cannot serve a listing of {len(items)}")
    stats = stats if stats is not None else ReadStats()

    def images():
        return shard_images(source, items, rank=rank, world_size=world_size, seed=seed, position=position,
                            stats=stats, repeat=repeat, recorded=recorded, limits=limits, cache=cache)

    # Listing, sharding and per-epoch shuffling happen in Python over item names;
    # only the bytes of this worker's own items are ever read. They cross into
    # TensorFlow in chunks (one Python call per image would cap the pipeline).
    # Decoding is per image and CPU-bound: chunks are decoded in parallel, and their
    # images come out in the generator's order (block_length = a whole chunk).
    # Errors are ignored only within a chunk: an image that passed the byte check
    # but still fails to decode is dropped. An error of the generator itself (the
    # storage failing for good) must reach the training loop as an error: a silent
    # end of data on one worker would leave the others waiting in a collective op.
    if cache is None and not source.decoded:
        chunks = tf.data.Dataset.from_generator(
            lambda: _chunks((data for _, data in images()), GENERATOR_CHUNK),
            output_signature=tf.TensorSpec([None], tf.string),
        )
        dataset = chunks.interleave(
            lambda encoded: tf.data.Dataset.from_tensor_slices(encoded)
            .map(decode_image, num_parallel_calls=tf.data.AUTOTUNE)
            .ignore_errors(log_warning=True),
            cycle_length=tf.data.AUTOTUNE, block_length=GENERATOR_CHUNK,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
        # Drop the remainder: every replica step needs a full, equal batch.
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        chunks = tf.data.Dataset.from_generator(
            lambda: _cached_chunks(images(), cache, source.decoded),
            output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string),
                              tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8)),
        )
        # Whole chunks stay whole up to the batching (one tf.data element per chunk, not per
        # image: per-image elements would cost more than reading the cached pixels).
        dataset = chunks.interleave(
            lambda positions, encoded, pixels: _decode_chunk(positions, encoded, pixels, cache),
            cycle_length=tf.data.AUTOTUNE, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        ).rebatch(batch_size, drop_remainder=True)  # full, equal batches, as above
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def next_batch(iterator: Iterator, stats: ReadStats):
    """The next batch; when the endless pipeline ends, the error that ended it (a storage failure
    naming its URL) instead of a bare StopIteration."""
    # Raise a failure as soon as it is known, before this worker's batches run out.
    if stats.failure is not None:
        raise stats.failure
    try:
        return next(iterator)
    except (StopIteration, tf.errors.OpError):
        if stats.failure is not None:
            raise stats.failure from None
        raise


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], the generator's tanh range."""
    return images / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images -> uint8 [0, 255]."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)

