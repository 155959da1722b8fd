"""`animegan data pack`: writes the images of any source as large shards plus a manifest.

Tens of thousands of small objects cost a round trip each to read; a few large
shards stream at the bucket's bandwidth. Packing is done once, offline (like
nanoGPT's prepare.py), and the job then trains from the pack.

The images are shuffled once with a seed before packing, so that every shard is
a random mixture even when the source is sorted (by character, by date): the
training pipeline then reads shards whole and only shuffles within a window.

Resumable: each shard is written (atomically) and then its record,
`shard-NNNNN.tar.json`; the manifest is written last. Running the same command
again verifies the shards already written (size and SHA-256), keeps the
verified ones and continues after them. The shuffled order is fixed by the
listing and the seed, so a resumed pack is byte for byte the pack an
uninterrupted run writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from animegan import storage
from animegan.data.decode import decode_image, problem_with
from animegan.data.shards import (
    Manifest,
    PackParameters,
    ShardInfo,
    ShardWriter,
    checked_shard,
    load_manifest,
    pack_folder,
    read_json,
    sha256_hex,
    shard_name,
    shard_problem,
)
from animegan.data.sources import PACK_MANIFEST, PACK_SHARD_NAME, failure_reason, list_images, open_source
from animegan.retries import call_with_retries

DEFAULT_SHARD_BYTES = 64 << 20
MINIMUM_SHARD_BYTES = 4096
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes from '64MB', '64MiB', '1.5GB', '4096' (decimal and binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"--shard-size must be a size such as 64MB, 256MiB or 1GB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < MINIMUM_SHARD_BYTES:
        raise ValueError(f"--shard-size must be at least {MINIMUM_SHARD_BYTES} bytes, got {text!r}")
    return size


def record_name(shard: str) -> str:
    """The record written next to a shard once the shard is complete."""
    return f"{shard}.json"


def member_name(position: int, item: str) -> str:
    """A shard member's name: the position in the packed order (unique) and the source's file name."""
    return f"{position:08d}-{posixpath.basename(item)}"


@dataclass(frozen=True)
class PackResult:
    manifest: str
    images: int
    skipped: list[str]
    shards: int
    reused_shards: int
    bytes: int
    seconds: float


class PackProgress:
    """A progress bar on a terminal, a line every few seconds in a log."""

    def __init__(self, total: int, stream=None, interval: float = 5.0):
        self.total = total
        self.stream = stream or sys.stdout
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.interactive else interval
        self.started = time.monotonic()
        self.last = 0.0
        self.done_at_start: int | None = None

    def update(self, done: int, shards: int, written: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.done_at_start is None:
            self.done_at_start = done
        if not force and now - self.last < self.interval:
            return
        self.last = now
        rate = (done - self.done_at_start) / max(now - self.started, 1e-9)
        remaining = (self.total - done) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining != float("inf") else "--:--:--"
        fraction = done / max(self.total, 1)
        text = (f"{fraction:4.0%} {done:,}/{self.total:,} images  {shards} shards  {written / 1e6:,.1f} MB  "
                f"{rate:,.0f} img/s  ETA {eta}")
        if self.interactive:
            bar = "#" * int(fraction * 30)
            print(f"\r[{bar:<30}] {text}", end="", file=self.stream, flush=True)
        else:
            print(f"packing: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.interactive:
            print(file=self.stream, flush=True)


def pack(
    source_url: str,
    destination: str,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
    log: Callable[[str], None] = print,
    progress: PackProgress | None = None,
    on_shard: Callable[[ShardInfo], None] | None = None,
    decoded: bool = False,
) -> PackResult:
    """Packs every image of `source_url` into shards at `destination`; resumes a pack left unfinished.

    With `decoded`, each image is stored as the uint8 64x64x3 pixels the pipeline
    would decode it to, so that training decodes nothing.
    """
    started = time.monotonic()
    source_url = storage.absolute(source_url)
    folder = storage.absolute(pack_folder(destination))
    source = open_source(source_url)
    if pack_folder(source_url) == folder:
        raise ValueError(f"cannot pack {source_url} into itself; choose another destination")
    items = list_images(source)
    parameters = PackParameters(
        source=source_url, source_images=len(items),
        listing_sha256=hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest(),
        seed=seed, shard_bytes=shard_bytes, decoded=decoded,
    )
    storage.makedirs(folder)
    kept = _verified_shards(folder, parameters, log)
    manifest_url = storage.join(folder, PACK_MANIFEST)

    # The packed order: one seeded shuffle of the listing, continued where the kept shards end.
    order = np.random.default_rng(seed).permutation(len(items))
    position = kept[-1].source_end if kept else 0
    shards = list(kept)
    written = sum(shard.bytes for shard in kept)
    progress = progress or PackProgress(len(items))
    writer, skipped = ShardWriter(shard_name(len(shards))), []

    def finish_shard(source_end: int) -> None:
        nonlocal writer, skipped, written
        data = writer.finish()
        info = ShardInfo(name=writer.name, images=len(writer.members), bytes=len(data), sha256=sha256_hex(data),
                         source_end=source_end, skipped=skipped, members=writer.members)
        url = storage.join(folder, info.name)
        call_with_retries(lambda: storage.write_bytes(url, data), what=f"writing {url}", url=url)
        # The record goes last: a shard without one is unfinished and is written again.
        record = storage.join(folder, record_name(info.name))
        text = json.dumps({**dataclasses.asdict(parameters), **dataclasses.asdict(info)})
        call_with_retries(lambda: storage.write_text(record, text), what=f"writing {record}", url=record)
        shards.append(info)
        written += info.bytes
        writer, skipped = ShardWriter(shard_name(len(shards))), []
        if on_shard:
            on_shard(info)

    remaining = [items[index] for index in order[position:]]
    try:
        for offset, (item, data) in enumerate(source.read(remaining)):
            here = position + offset
            problem = failure_reason(data) if isinstance(data, Exception) else problem_with(data)
            if decoded and not problem:
                data, problem = _pixels(data)
            if problem:
                skipped.append(f"{item}: {problem}")
            else:
                # Close the shard before it would pass the target size (one image larger
                # than the target still gets a shard of its own).
                if writer.members and writer.size_with(len(data)) > shard_bytes:
                    finish_shard(source_end=here)
                writer.add(member_name(here, item), data)
            progress.update(here + 1, len(shards), written)
        # A shard is only closed when an image is added, so the last one is never empty
        # unless no image at all could be read.
        if writer.members:
            finish_shard(source_end=len(items))
        progress.update(len(items), len(shards), written, force=True)
    finally:
        progress.close()

    if not shards:
        examples = "; ".join(skipped[:3])
        raise ValueError(f"none of the {len(items)} images at {source_url} could be read ({examples})")
    manifest = Manifest(parameters, shards)
    _remove_stale_shards(folder, len(shards))
    storage.write_text(manifest_url, json.dumps(manifest.to_dict()) + "\n")
    return PackResult(manifest=manifest_url, images=manifest.images, skipped=manifest.skipped, shards=len(shards),
                      reused_shards=len(kept), bytes=written, seconds=time.monotonic() - started)


def _pixels(data: bytes) -> tuple[bytes, str | None]:
    """The pixels the training pipeline decodes `data` to, as bytes; or why it cannot."""
    try:
        return decode_image(tf.constant(data)).numpy().tobytes(), None
    except tf.errors.OpError:
        return b"", "could not be decoded"


def _verified_shards(folder: str, parameters: PackParameters, log: Callable[[str], None]) -> list[ShardInfo]:
    """The shards already at `folder` from an earlier run with the same parameters, verified, in order."""
    manifest_url = storage.join(folder, PACK_MANIFEST)
    if storage.exists(manifest_url):
        manifest = load_manifest(manifest_url)
        _check_same_pack(manifest.parameters, parameters, folder)
        records = manifest.shards
    else:
        records = []
        names = set(storage.list_dir(folder))
        while record_name(shard_name(len(records))) in names:
            record_url = storage.join(folder, record_name(shard_name(len(records))))
            values = read_json(record_url)
            _check_same_pack(PackParameters(**{field.name: values.pop(field.name, field.default)
                                              for field in dataclasses.fields(PackParameters)}),
                             parameters, folder)
            records.append(checked_shard(values, record_url))
    kept = []
    for record in records:
        problem = shard_problem(folder, record)
        if problem:
            log(f"{record.name} is {problem}: packing again from there")
            break
        kept.append(record)
    if kept:
        log(f"Resuming: {len(kept)} shard(s) already written and verified at {folder}, skipped")
    return kept


def _check_same_pack(found: PackParameters, wanted: PackParameters, folder: str) -> None:
    if found == wanted:
        return
    differences = ", ".join(f"{field.name} {getattr(found, field.name)!r} (now {getattr(wanted, field.name)!r})"
                            for field in dataclasses.fields(PackParameters)
                            if getattr(found, field.name) != getattr(wanted, field.name))
    raise ValueError(f"{folder} already holds a different pack: {differences}. "
                     f"Choose another destination, or delete it to pack again")


def _remove_stale_shards(folder: str, count: int) -> None:
    """Deletes shards (and records) numbered past the end, left by an earlier, different run."""
    for name in storage.list_dir(folder):
        shard = name[: -len(".json")] if name.endswith(".json") else name
        if PACK_SHARD_NAME.fullmatch(shard) and int(shard[len("shard-"):-len(".tar")]) >= count:
            fs, path = storage.filesystem(storage.join(folder, name))
            fs.rm(path)
