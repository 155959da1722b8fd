"""Packed shards: many images in a few large objects, read with large sequential reads.

A pack is a folder (local or gs://) of uncompressed tar files, `shard-00000.tar`,
`shard-00001.tar`, ..., each holding images exactly as they were encoded, and a
`manifest.json` that lists the shards with their sizes and SHA-256 checksums, and
where every image's bytes sit inside its shard. `animegan data pack` writes it
(animegan.data.packing); `PackedSource` reads it.

Why tar and not TFRecord: a shard is read through fsspec like every other
source, so it shares gcsfs's credentials, the emulator and our retries, and
TFRecord's one advantage, a native tf.data reader, would not be used (TF's own
GCS client knows nothing of either). tar needs no protobuf schema, keeps each
image's name next to its bytes, and any machine can list or unpack a shard
(`tar tvf shard-00000.tar`). Its cost is a 512-byte header per image and
padding to 512 bytes (about 20% on 3.5 KB faces), bytes that are read
sequentially anyway.

Reading does not parse tar at all: the manifest records each image's data offset
and size, so a worker fetches the byte range of its run of images in a few large
requests and slices the images out.

A manifest is read from storage others can write to, so it is untrusted: a
shard's name must be a plain file name in the pack's folder, every member must
lie inside its shard, after the one before it, and every shard must have the
size the manifest says (checked against storage when the pack is opened), or
the pack is refused with a line naming what is wrong. Members larger than the
source's byte limit are skipped without being fetched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from animegan import storage
from animegan.data.sources import (DEFAULT_MAX_ITEM_BYTES, PACK_MANIFEST, ImageSource, Oversized, ReadResult,
                                   prefetched)
from animegan.retries import StorageError, call_with_retries

FORMAT = "animegan-pack"
VERSION = 1
# One range request of a shard: large enough that a round trip costs little next
# to the transfer, small enough that the first images arrive quickly.
READ_CHUNK_BYTES = 8 << 20
TAR_BLOCK = 512


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its images, size and checksum, and where each image's bytes are."""

    name: str
    images: int
    bytes: int
    sha256: str
    # Position in the pack's (shuffled) source order after this shard's last image,
    # counting skipped ones: where a resumed `data pack` continues.
    source_end: int
    # "item: reason" for each unreadable source image met while filling this shard.
    skipped: list[str]
    # [member name, data offset, data size] per image, in the shard's order.
    members: list[list[Any]]


@dataclass(frozen=True)
class PackParameters:
    """What a pack was made from and how; a resumed `data pack` must match them."""

    source: str
    source_images: int
    listing_sha256: str
    seed: int
    shard_bytes: int
    # `data pack --decoded`: members are decoded uint8 64x64x3 pixels (12,288 bytes,
    # row-major RGB), not encoded images, and the pipeline decodes nothing.
    decoded: bool = False


@dataclass(frozen=True)
class Manifest:
    parameters: PackParameters
    shards: list[ShardInfo]

    @property
    def images(self) -> int:
        return sum(shard.images for shard in self.shards)

    @property
    def skipped(self) -> list[str]:
        return [entry for shard in self.shards for entry in shard.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "images": self.images, "skipped": len(self.skipped),
            **dataclasses.asdict(self.parameters),
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], url: str) -> "Manifest":
        if not isinstance(values, dict) or values.get("format") != FORMAT:
            raise ValueError(f"{url} is not an animegan pack manifest (no \"format\": \"{FORMAT}\")")
        if values.get("version", 0) > VERSION:
            raise ValueError(f"{url} was written by a newer animegan (pack version {values['version']}); "
                             f"this one reads version {VERSION}")
        try:
            parameters = PackParameters(**{field.name: values[field.name]
                                           for field in dataclasses.fields(PackParameters)
                                           if field.name in values or field.default is dataclasses.MISSING})
            if not isinstance(parameters.decoded, bool):
                raise ValueError(f"pack manifest {url} is damaged: \"decoded\" is not true or false")
            shards = [checked_shard(shard, url) for shard in values["shards"]]
        except (KeyError, TypeError) as error:
            raise ValueError(f"pack manifest {url} is damaged: {error}") from None
        return cls(parameters, shards)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def checked_shard(values: Any, where: str) -> ShardInfo:
    """A shard's record from a manifest (or a shard record) at `where`, refused unless it is safe to read.

    Its name must stay in the pack's folder, and every member must lie inside the
    shard, after the one before it (the reader slices members out of sequential reads).
    """
    if not isinstance(values, dict):
        raise ValueError(f"pack manifest {where} is damaged: a shard entry is not an object")
    try:
        shard = ShardInfo(**values)
    except TypeError as error:
        raise ValueError(f"pack manifest {where} is damaged: {error}") from None
    storage.check_relative_name(shard.name, where, single=True)
    if not _is_count(shard.bytes) or not isinstance(shard.members, list):
        raise ValueError(f"pack manifest {where} is damaged: {shard.name} has no valid size or member list")
    end = 0
    for member in shard.members:
        if not (isinstance(member, list) and len(member) == 3 and isinstance(member[0], str)
                and _is_count(member[1]) and _is_count(member[2])):
            raise ValueError(f"pack manifest {where} is damaged: {shard.name} lists a malformed member {member!r}")
        name, offset, size = member
        if offset < end or offset + size > shard.bytes:
            raise ValueError(f"pack manifest {where} is damaged: {shard.name} member {name!r} at bytes "
                             f"{offset}-{offset + size} overlaps the member before it or lies outside the "
                             f"shard's {shard.bytes} bytes: refusing the pack")
        end = offset + size
    return shard


def _check_pixel_members(manifest: Manifest, where: str) -> None:
    """Refuses a decoded pack whose members are not each exactly one image of pixels."""
    from animegan.data.pixel_cache import IMAGE_BYTES

    for shard in manifest.shards:
        for name, _, size in shard.members:
            if size != IMAGE_BYTES:
                raise ValueError(f"pack manifest {where} is damaged: {shard.name} member {name!r} has {size} "
                                 f"bytes, not one decoded image's {IMAGE_BYTES}: refusing the pack")


def pack_folder(url: str) -> str:
    """The folder of a pack given the folder itself or its manifest's URL."""
    url = url.rstrip("/")
    if posixpath.basename(url) == PACK_MANIFEST:
        return url[: -len(PACK_MANIFEST)].rstrip("/") or "."
    return url


def read_json(url: str) -> Any:
    """A JSON document, retried on transient storage errors; FileNotFoundError when it is missing."""
    text = call_with_retries(lambda: storage.read_text(url), what=f"reading {url}", url=url)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{url} is not valid JSON: {error}") from None


def load_manifest(url: str) -> Manifest:
    """The manifest of the pack at `url` (its folder or manifest.json), with clear errors."""
    manifest_url = storage.join(pack_folder(url), PACK_MANIFEST)
    try:
        values = read_json(manifest_url)
    except FileNotFoundError:
        raise ValueError(f"no pack manifest at {manifest_url}") from None
    return Manifest.from_dict(values, manifest_url)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ShardWriter:
    """Builds one shard in memory: a plain tar with reproducible headers (same images, same bytes)."""

    def __init__(self, name: str):
        self.name = name
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.members: list[list[Any]] = []

    def size_with(self, data_size: int) -> int:
        """The finished shard's size if an image of `data_size` bytes were added now (plain headers)."""
        return self._tar.offset + TAR_BLOCK + _padded(data_size) + 2 * TAR_BLOCK

    def add(self, member_name: str, data: bytes) -> None:
        info = tarfile.TarInfo(member_name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # no timestamps: a re-packed shard is identical, byte for byte
        self._tar.addfile(info, io.BytesIO(data))
        # The data ends the tar so far, padded to whole blocks.
        self.members.append([member_name, self._tar.offset - _padded(len(data)), len(data)])

    def finish(self) -> bytes:
        # The end-of-archive marker (two empty blocks), without tarfile's padding of the
        # whole file to 10 KiB records, which no reader needs.
        self._buffer.write(bytes(2 * TAR_BLOCK))
        return self._buffer.getvalue()


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def shard_problem(folder: str, shard: ShardInfo) -> str | None:
    """Why a written shard does not match its record (missing, wrong size, wrong checksum), or None."""
    url = storage.join(folder, shard.name)
    try:
        data = call_with_retries(lambda: storage.read_bytes(url), what=f"reading {url}", url=url)
    except FileNotFoundError:
        return "missing"
    if len(data) != shard.bytes:
        return f"damaged ({len(data)} bytes instead of {shard.bytes})"
    if sha256_hex(data) != shard.sha256:
        return "damaged (SHA-256 checksum mismatch)"
    return None


class PackedSource(ImageSource):
    """Images packed by `animegan data pack`, given the pack's folder or its manifest.json.

    Items are "<shard>/<member>". A run of consecutive items of one shard is read
    as one byte range, in chunks of `chunk_bytes`, the next chunk fetched while
    the current one is sliced into images.
    """

    def __init__(self, url: str, chunk_bytes: int = READ_CHUNK_BYTES, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES):
        super().__init__(url, max_item_bytes)
        self.folder = pack_folder(url)
        self.manifest = load_manifest(url)
        self.chunk_bytes = chunk_bytes
        self.decoded = self.manifest.parameters.decoded
        if self.decoded:
            _check_pixel_members(self.manifest, storage.join(self.folder, PACK_MANIFEST))
        self.fs, _ = storage.filesystem(self.folder)
        self._check_shard_sizes()
        self._paths = {shard.name: storage.filesystem(storage.join(self.folder, shard.name))[1]
                       for shard in self.manifest.shards}
        self._locations = {
            f"{shard.name}/{name}": (shard.name, index, offset, size)
            for shard in self.manifest.shards
            for index, (name, offset, size) in enumerate(shard.members)
        }

    def _check_shard_sizes(self) -> None:
        """Refuses a manifest whose shard sizes (and so its members' offsets) disagree with storage.

        One listing of the folder. A missing shard is left to the read, which names it.
        """
        sizes = call_with_retries(lambda: storage.file_sizes(self.folder), what=f"listing {self.folder}",
                                  url=self.folder)
        for shard in self.manifest.shards:
            actual = sizes.get(shard.name)
            if actual is not None and actual != shard.bytes:
                raise ValueError(f"pack manifest {storage.join(self.folder, PACK_MANIFEST)} says {shard.name} has "
                                 f"{shard.bytes} bytes, but it has {actual}: the pack is damaged; run `animegan "
                                 f"data pack` again to repair it")

    def describe(self) -> str:
        return f"{self.url} ({self.manifest.images} images in {len(self.manifest.shards)} shards)"

    def list_items(self) -> list[str]:
        return [f"{shard.name}/{member[0]}" for shard in self.manifest.shards for member in shard.members]

    def sequential_runs(self, items: Sequence[str]) -> list[int]:
        runs: list[int] = []
        previous = None
        for item in items:
            shard = item.split("/", 1)[0]
            if shard == previous:
                runs[-1] += 1
            else:
                runs.append(1)
                previous = shard
        return runs

    def _spans(self, items: Sequence[str]) -> list[tuple[str, list]]:
        """Items grouped into spans of consecutive members of one shard: (shard, [(item, offset, size)])."""
        spans: list[tuple[str, list]] = []
        previous = None
        for item in items:
            location = self._locations.get(item)
            if location is None:
                spans.append(("", [(item, None, None)]))
                previous = None
                continue
            shard, index, offset, size = location
            if size > self.max_item_bytes:
                # Never fetched: a span of its own that read() reports as oversized.
                spans.append(("", [(item, offset, size)]))
                previous = None
                continue
            if previous == (shard, index - 1):
                spans[-1][1].append((item, offset, size))
            else:
                spans.append((shard, [(item, offset, size)]))
            previous = (shard, index)
        return spans

    def read(self, items: Sequence[str]) -> Iterator[ReadResult]:
        spans = self._spans(items)
        requests = []
        for shard, members in spans:
            if not shard:
                continue
            start, end = members[0][1], members[-1][1] + members[-1][2]
            requests += [(shard, position, min(end, position + self.chunk_bytes))
                         for position in range(start, end, self.chunk_bytes)]
        chunks = prefetched(self._fetch_range, requests, depth=2)
        try:
            for shard, members in spans:
                if not shard:
                    item, _, size = members[0]
                    yield item, (KeyError(f"{item} is not in the pack at {self.folder}") if size is None
                                 else Oversized(size, self.max_item_bytes, "pack entry"))
                    continue
                # `buffer` holds the run's bytes [buffer_start, buffer_start + len(buffer)).
                buffer, buffer_start = b"", members[0][1]
                for item, offset, size in members:
                    while buffer_start + len(buffer) < offset + size:
                        # Drop what is before this image (its header may lie past the buffer's
                        # end), then append the run's next chunk.
                        dropped = min(offset - buffer_start, len(buffer))
                        buffer, buffer_start = buffer[dropped:] + next(chunks), buffer_start + dropped
                    yield item, buffer[offset - buffer_start: offset - buffer_start + size]
        finally:
            chunks.close()

    def _fetch_range(self, request: tuple[str, int, int]) -> bytes:
        shard, start, end = request
        url = storage.join(self.folder, shard)
        try:
            data = call_with_retries(lambda: self.fs.cat_file(self._paths[shard], start=start, end=end),
                                     what=f"reading {url} (bytes {start}-{end})", url=url)
        except FileNotFoundError:
            raise StorageError(f"packed shard {url} is missing; the pack is damaged: run "
                               f"`animegan data pack {self.manifest.parameters.source} {self.folder}` "
                               f"again to repair it", url=url) from None
        if len(data) != end - start:
            raise StorageError(f"packed shard {url} is shorter than its manifest says (asked for bytes "
                               f"{start}-{end}, got {len(data)}); the pack is damaged: run `animegan data "
                               f"pack` again to repair it", url=url)
        return data
