"""Decode once: a worker keeps the uint8 64x64x3 pixels of each image it has decoded.

The first epoch reads and decodes files as before; from the second on, the
pipeline (animegan/data/pipeline.py) hands over the kept pixels and reads no
files. Pixels sit in memory up to a budget (--cache-memory), beyond it in
memory-mapped files under the worker's local temporary folder.

Invariants:
- An item is known by its position in the data index's training items. Its
  state only ever moves from unknown to decoded or to skipped, and a stored
  slot is never rewritten: readers need no copy of the state they looked at.
- The pixels are exactly what decode_image returned, so the batches are the
  same, pixel for pixel and in the same order, with or without the cache.
- A cache is keyed by the items, the source's content stamp (file sizes and
  times, a zip's or a pack's identity) and the decode settings; a process keeps
  one cache at a time, and a pipeline with another key gets a new, empty one.
- The bytes held in memory never exceed the budget: memory is taken in blocks
  of whole images, and a block that would pass the budget goes to disk instead.
  A disk block is allocated in full before use, so a full disk turns spilling
  off (those images are decoded every epoch) instead of killing the process.
- One lock guards states, slots and blocks: tf.data's decode threads store,
  the generator's thread reads.
- Nothing is persisted: a restarted or resumed worker fills a new cache, lazily.
  Spill files go with the cache or the process; those of a process killed
  outright are removed by the next cache that spills on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from typing import Sequence

import numpy as np

from animegan.config import IMAGE_SIZE

logger = logging.getLogger(__name__)

UNKNOWN, DECODED, SKIPPED = 0, 1, 2
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
# Images per block of memory or per spill file: 12.6 MB, few enough allocations,
# fine enough that the budget is used nearly in full.
BLOCK_IMAGES = 1024
# Part of decode_image's behaviour the key must capture: bump when decoding changes.
DECODE_VERSION = "decode_image/1: rgb over white, centre square, area resize with antialias"
DEFAULT_CACHE_MEMORY = "25%"


def parse_cache_memory(text: str) -> float | int | None:
    """--cache-memory: None for 'off', a fraction for 'N%', else bytes ('0', '512MiB', '2GB')."""
    value = str(text).strip().lower()
    if value == "off":
        return None
    percent = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", value)
    if percent and float(percent.group(1)) <= 100:
        return float(percent.group(1)) / 100
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(|b|kb|mb|gb|tb|kib|mib|gib|tib)", value)
    if not size:
        raise ValueError(f"--cache-memory must be a size such as 0, 512MiB or 4GB, a percentage of the "
                         f"worker's available memory such as 25%, or off; got {text!r}")
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
    return int(float(size.group(1)) * units[size.group(2)])


def available_memory() -> int:
    """Bytes this process could still take: the smaller of the machine's available memory and
    what its container (cgroup) limit leaves."""
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in [("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")]:
        try:
            with open(limit_file, encoding="ascii") as limit, open(usage_file, encoding="ascii") as usage:
                limit_text = limit.read().strip()
                if limit_text.isdigit():
                    candidates.append(max(0, int(limit_text) - int(usage.read().strip())))
        except (OSError, ValueError):
            continue
    if not candidates:
        candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(candidates)


def memory_budget(setting: str, local_workers: int = 1) -> int | None:
    """In-memory bytes for one worker's cache (None: no cache); a percentage is of the available
    memory, shared by the workers on this machine."""
    value = parse_cache_memory(setting)
    if isinstance(value, float):
        return int(value * available_memory() / max(1, local_workers))
    return value


def cache_key(source, items: Sequence[str], size: int, max_pixels: int, max_bytes: int) -> str:
    """SHA-256 of what the cached pixels depend on: the items, the source's content and the decode settings."""
    digest = hashlib.sha256()
    for part in [source.url, f"{size}", f"{max_pixels}", f"{max_bytes}", DECODE_VERSION, source_stamp(source, items)]:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    for item in items:
        digest.update(item.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def source_stamp(source, items: Sequence[str]) -> str:
    """What changes when the source's bytes do, as far as is cheap to learn.

    Local files: each one's size and modification time. A pack: its shards'
    checksums. A zip archive: the archive's size and time (or ETag). Objects in a
    bucket listed one by one: nothing beyond their names (stat'ing every object
    would cost a request each); the cache never outlives the worker process, so
    only an object replaced during a run goes unnoticed, as it would be without the cache.
    """
    from animegan.data.sources import FileSource, ZipSource

    manifest = getattr(source, "manifest", None)
    if manifest is not None:
        return ",".join(shard.sha256 for shard in manifest.shards)
    if isinstance(source, FileSource) and source.local:
        stamps = []
        for item in items:
            try:
                status = os.stat(item)
                stamps.append(f"{status.st_size}:{status.st_mtime_ns}")
            except OSError:
                stamps.append("-")
        return hashlib.sha256("\n".join(stamps).encode()).hexdigest()
    if isinstance(source, ZipSource):
        try:
            info = source.fs.info(source.path)
        except OSError:
            return "-"
        return ":".join(str(info.get(name, "")) for name in ("size", "mtime", "created", "etag", "generation"))
    return ""


class PixelCache:
    """Decoded pixels of up to `count` items, in memory up to `memory_budget` bytes, the rest in `folder`."""

    def __init__(self, key: str, count: int, memory_budget: int, folder: str | None = None,
                 block_images: int = BLOCK_IMAGES):
        if memory_budget < 0:
            raise ValueError(f"--cache-memory must not be negative, got {memory_budget}")
        self.key = key
        self.count = count
        self.memory_budget = memory_budget
        self.block_images = block_images
        self.block_bytes = block_images * IMAGE_BYTES
        self.memory_capacity = (memory_budget // self.block_bytes) * block_images
        # Made at the first spill: a cache that fits in memory leaves nothing on disk.
        self.folder = folder
        self._remove_folder: weakref.finalize | None = None
        self.states = np.zeros(count, np.uint8)
        self.slots = np.full(count, -1, np.int64)
        self.reasons: dict[int, str] = {}
        self._memory_blocks: list[np.ndarray] = []
        self._disk_blocks: list[np.memmap] = []
        self._next_slot = 0
        self._disk_full = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading (the generator's thread)

    def states_of(self, indices: np.ndarray) -> np.ndarray:
        """UNKNOWN, DECODED or SKIPPED for each item: only unknown ones need reading."""
        with self._lock:
            return self.states[indices]

    def skip_reason(self, index: int) -> str | None:
        with self._lock:
            return self.reasons.get(int(index)) if self.states[index] == SKIPPED else None

    def pixels(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 [len(indices), 64, 64, 3] of decoded items."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), *IMAGE_SHAPE), np.uint8)
        with self._lock:
            missing = indices[self.states[indices] != DECODED]
            if len(missing):
                raise KeyError(f"item {missing[0]} is not in the pixel cache")
            every_block = self._memory_blocks + self._disk_blocks
            capacity, size = self.memory_capacity, self.block_images
            memory_blocks = capacity // size  # all allocated once anything spills
            for position, slot in enumerate(self.slots[indices].tolist()):
                if slot < capacity:
                    out[position] = every_block[slot // size][slot % size]
                else:
                    out[position] = every_block[memory_blocks + (slot - capacity) // size][(slot - capacity) % size]
        return out

    # ------------------------------------------------------------------ filling (tf.data's decode threads)

    def store(self, indices: Sequence[int], pixels: np.ndarray) -> None:
        """Keeps freshly decoded pixels; an item already known is left as it is."""
        if pixels.shape[1:] != IMAGE_SHAPE or pixels.dtype != np.uint8 or len(indices) != len(pixels):
            raise ValueError(f"pixels of shape {pixels.shape} ({pixels.dtype}) cannot fill {len(indices)} "
                             f"cache entries of {IMAGE_SHAPE} uint8")
        with self._lock:
            for index, image in zip(indices, pixels):
                if self.states[index] != UNKNOWN:
                    continue
                place = self._allocate()
                if place is None:
                    return  # no room left: these stay unknown and are decoded again next epoch
                block, row = place
                block[row] = image
                self.slots[index] = self._next_slot
                self._next_slot += 1
                self.states[index] = DECODED

    def skip(self, index: int, reason: str) -> None:
        """Remembers an item that could not be read or decoded, and why."""
        with self._lock:
            if self.states[index] == UNKNOWN:
                self.states[index] = SKIPPED
                self.reasons[int(index)] = reason

    # ------------------------------------------------------------------ sizes

    @property
    def memory_bytes(self) -> int:
        return len(self._memory_blocks) * self.block_bytes

    @property
    def disk_bytes(self) -> int:
        return len(self._disk_blocks) * self.block_bytes

    @property
    def decoded(self) -> int:
        return int(np.count_nonzero(self.states == DECODED))

    def spill_files(self) -> list[str]:
        """Names of the memory-mapped files in `folder`, in slot order."""
        return [os.path.basename(block.filename) for block in self._disk_blocks]

    def close(self) -> None:
        with self._lock:
            self._memory_blocks.clear()
            self._disk_blocks.clear()
        if self._remove_folder is not None:
            self._remove_folder()

    # ------------------------------------------------------------------ blocks (under the lock)

    def _place(self, slot: int) -> tuple[np.ndarray, int]:
        if slot < self.memory_capacity:
            return self._memory_blocks[slot // self.block_images], slot % self.block_images
        spilled = slot - self.memory_capacity
        return self._disk_blocks[spilled // self.block_images], spilled % self.block_images

    def _allocate(self) -> tuple[np.ndarray, int] | None:
        """The block and row of the next slot, taking a new block when needed; None when none can be had."""
        slot = self._next_slot
        if slot < self.memory_capacity:
            if slot // self.block_images == len(self._memory_blocks):
                self._memory_blocks.append(np.empty((self.block_images, *IMAGE_SHAPE), np.uint8))
            return self._place(slot)
        spilled = slot - self.memory_capacity
        if spilled // self.block_images == len(self._disk_blocks):
            if self._disk_full:
                return None
            path = None
            try:
                path = os.path.join(self._spill_folder(), f"pixels-{len(self._disk_blocks):05d}.u8")
                with open(path, "wb") as file:
                    # Allocated now, so that writing through the map cannot hit a full disk (SIGBUS).
                    os.posix_fallocate(file.fileno(), 0, self.block_bytes)
                self._disk_blocks.append(np.memmap(path, np.uint8, "r+", shape=(self.block_images, *IMAGE_SHAPE)))
            except OSError as error:
                self._disk_full = True
                logger.warning("pixel cache: cannot spill to %s (%s); images beyond %d are decoded every epoch",
                               self.folder, error, slot)
                if path is not None:
                    with contextlib.suppress(OSError):
                        os.remove(path)
                return None
        return self._place(slot)

    def _spill_folder(self) -> str:
        if self._remove_folder is None:
            if self.folder is None:
                remove_abandoned_spills()
                self.folder = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-{self.key[:12]}-")
            os.makedirs(self.folder, exist_ok=True)
            # Spill files go when the cache does, or at the latest when the process ends.
            self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, True)
        return self.folder


SPILL_PREFIX = "animegan-pixels-"


def remove_abandoned_spills(parent: str | None = None) -> list[str]:
    """Deletes the spill folders of processes that are gone; their paths.

    A worker killed outright (a Ray worker group torn down, SIGKILL) never runs its
    clean-up, and its spill files would fill the local disk run after run. The
    folder's name holds its process id, so the next cache on the machine removes them.
    """
    parent = parent or tempfile.gettempdir()
    removed = []
    for name in os.listdir(parent):
        match = re.fullmatch(re.escape(SPILL_PREFIX) + r"(\d+)-.*", name)
        if not match or _is_alive(int(match.group(1))):
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(os.path.join(parent, name))
    return removed


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# One cache per process: a new key replaces it, so that two caches never share the budget.
_current: PixelCache | None = None
_current_lock = threading.Lock()


def shared_cache(key: str, count: int, budget: int, folder: str | None = None,
                 block_images: int = BLOCK_IMAGES) -> PixelCache:
    """This process's cache for `key`: the one it already has, else a new, empty one (the old one freed)."""
    global _current
    with _current_lock:
        if (_current is not None and _current.key == key and _current.count == count
                and _current.memory_budget == budget and _current.block_images == block_images):
            return _current
        if _current is not None:
            _current.close()
        _current = PixelCache(key, count, budget, folder, block_images)
        return _current


def cache_for(source, items: Sequence[str], limits, setting: str = DEFAULT_CACHE_MEMORY,
              local_workers: int = 1) -> PixelCache | None:
    """The worker's cache for decoding `items` of `source` within `limits` (an ImageLimits) at
    --cache-memory `setting`; None when the setting is off."""
    budget = memory_budget(setting, local_workers)
    if budget is None:
        return None
    return shared_cache(cache_key(source, items, IMAGE_SIZE, limits.max_pixels, limits.max_bytes), len(items), budget)
