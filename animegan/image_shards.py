"""Shards of generated images: plain tar files of PNGs, one member per image.

A tar of `<key>.png` members is the layout WebDataset and `tar -x` read as they
are, and it needs nothing beyond the standard library. The members' metadata is
fixed (mtime 0, owner 0, mode 0644) so that the same images give the same bytes.
Kept small and apart from the generation logic, so that the format can be
unified with the training data's packing later without touching the rest.
"""

from __future__ import annotations

import io
import tarfile
from typing import Iterable


def pack_shard(members: Iterable[tuple[str, bytes]]) -> bytes:
    """The bytes of an uncompressed tar holding (name, data) members, in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack_shard(data: bytes) -> list[tuple[str, bytes]]:
    """(name, data) of every regular file in a shard, in archive order."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            return [(member.name, archive.extractfile(member).read())
                    for member in archive.getmembers() if member.isfile()]
    except tarfile.TarError as error:
        raise ValueError(f"not a readable tar shard: {error}") from None
