"""What a generation job leaves in its output folder, and how to tell which files are done.

    manifest.json        what was asked (count, seed, generator, format) and how files are named;
                         written first (status "running"), so that an interrupted folder is
                         recognised, and again at the end (status "complete", with timings)
    000000.png ...       one file per image (format png or jpg), or
    shard-00000.tar ...  tars of PNGs, `images_per_shard` each (format shards; see image_shards.py)

Every file is written whole or not at all (`storage.write_bytes`: a rename locally,
a single upload on object storage), so a file listed under its final name with a
non-zero size is complete: one listing of the folder tells which files are done.
A manifest naming another seed, generator or naming rule stops a job rather than
mix two sets of images in one folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from animegan import storage
from animegan.generation import GeneratorSource

FORMATS = ("png", "jpg", "shards")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class OutputNaming:
    """Which images each output file holds, and what it is called."""

    count: int
    image_format: str
    images_per_shard: int = 1000

    @property
    def sharded(self) -> bool:
        return self.image_format == "shards"

    @property
    def images_per_file(self) -> int:
        return self.images_per_shard if self.sharded else 1

    @property
    def num_files(self) -> int:
        return math.ceil(self.count / self.images_per_file)

    @property
    def _index_digits(self) -> int:
        return max(6, len(str(self.count - 1)))

    @property
    def _shard_digits(self) -> int:
        return max(5, len(str(self.num_files - 1)))

    def image_name(self, index: int) -> str:
        """A single image's name: the file itself, or its member name inside a shard."""
        extension = "png" if self.sharded else self.image_format
        return f"{index:0{self._index_digits}d}.{extension}"

    def file_name(self, number: int) -> str:
        return f"shard-{number:0{self._shard_digits}d}.tar" if self.sharded else self.image_name(number)

    def image_range(self, number: int) -> range:
        first = number * self.images_per_file
        return range(first, min(self.count, first + self.images_per_file))

    def rule(self) -> dict:
        """The naming rule as Python format strings, for the manifest's readers."""
        if self.sharded:
            return {"file": f"shard-{{shard:0{self._shard_digits}d}}.tar", "images_per_file": self.images_per_shard,
                    "member": f"{{index:0{self._index_digits}d}}.png"}
        return {"file": f"{{index:0{self._index_digits}d}}.{self.image_format}", "images_per_file": 1}


def new_manifest(checkpoint: str, seed: int, batch_size: int, source: GeneratorSource,
                 naming: OutputNaming) -> dict:
    """The manifest of a job that is starting: status "running"."""
    manifest = {
        "version": MANIFEST_VERSION, "status": "running", "count": naming.count, "seed": seed,
        "checkpoint": storage.absolute(checkpoint), "generator": source.url,
        "generator_kind": source.kind, "generator_step": source.step, "format": naming.image_format,
        "naming": naming.rule(), "batch_size": batch_size,
    }
    if naming.sharded:
        manifest["files"] = [{"name": naming.file_name(number), "first": naming.image_range(number).start,
                              "count": len(naming.image_range(number))} for number in range(naming.num_files)]
    return manifest


# What must match for the files already in a folder to count as this job's. The count may
# change for single images (image i does not depend on it); a shard's content does.
_IDENTITY = ("seed", "generator", "generator_step", "format", "naming")


def check_same_job(out: str, existing: set[str], manifest: dict, naming: OutputNaming) -> None:
    """Raises ValueError unless the files in `out` can only be this job's (see _IDENTITY)."""
    remedy = "use another --out, or pass --overwrite to replace them"
    if MANIFEST_NAME not in existing:
        ours = [name for name in existing if name != MANIFEST_NAME and name.endswith((".png", ".jpg", ".tar"))]
        if ours:
            raise ValueError(f"{out} already holds {len(ours)} image files but no {MANIFEST_NAME}, so they cannot "
                             f"be trusted to match; {remedy}")
        return
    try:
        previous = json.loads(storage.read_text(storage.join(out, MANIFEST_NAME)))
    except ValueError:
        raise ValueError(f"{storage.join(out, MANIFEST_NAME)} is not readable JSON; {remedy}") from None
    keys = _IDENTITY + (("count",) if naming.sharded else ())
    for key in keys:
        if previous.get(key) != manifest[key]:
            raise ValueError(f"{out} already holds images generated with {key} {previous.get(key)!r}, "
                             f"not {manifest[key]!r}; {remedy}")


def complete_files(out: str) -> set[str]:
    """Names of the non-empty files directly in `out`, from one listing (none when it is missing).

    Writes are atomic, so a name in the listing is a whole file. Leftover temporary files of
    an interrupted local write are removed.
    """
    fs, path = storage.filesystem(out)
    fs.invalidate_cache(path)  # gcsfs caches listings; files may have been written since
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return set()
    names = set()
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/"))
        if storage.is_local(out) and name.startswith(".tmp-"):
            os.remove(entry["name"])
        elif entry.get("type") == "file" and entry.get("size", 0) > 0:
            names.add(name)
    return names


def read_images(out: str, naming: OutputNaming, indices: Sequence[int]) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]: images as written to `out` (for grids and checks)."""
    from PIL import Image

    from animegan.image_shards import unpack_shard

    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    if not naming.sharded:
        return np.stack([decode(storage.read_bytes(storage.join(out, naming.image_name(index))))
                         for index in indices])
    members: dict[str, bytes] = {}
    for number in sorted({index // naming.images_per_file for index in indices}):
        members.update(unpack_shard(storage.read_bytes(storage.join(out, naming.file_name(number)))))
    return np.stack([decode(members[naming.image_name(index)]) for index in indices])
