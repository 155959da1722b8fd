"""Images (good and damaged) put into emulator buckets and local folders for the streaming tests."""

from __future__ import annotations

from tests.support.images import encode, pattern


def image_bytes(count: int, image_format: str = "PNG") -> dict[str, bytes]:
    """{name: encoded 64x64 image}, names 00000.png ... in sorted order."""
    extension = {"PNG": "png", "JPEG": "jpg"}[image_format]
    return {f"{index:05d}.{extension}": encode(pattern(64, 64, seed=index), image_format) for index in range(count)}


def damaged_bytes() -> dict[str, bytes]:
    """Objects named like images that are not whole images: the pipeline must skip and count them."""
    whole_jpeg = encode(pattern(64, 64, seed=999), "JPEG")
    return {
        "bad-text.jpg": b"this is not an image at all",
        "bad-empty.png": b"",
        "bad-truncated.jpg": whole_jpeg[: len(whole_jpeg) // 2],
    }


def upload(url: str, files: dict[str, bytes]) -> list[str]:
    """Writes files under a gs:// URL (4 at a time: the emulator serves one request at a time)."""
    import fsspec

    fs = fsspec.filesystem("gs")
    prefix = url.removeprefix("gs://").rstrip("/")
    fs.pipe({f"{prefix}/{name}": data for name, data in files.items()}, batch_size=4)
    fs.invalidate_cache()
    return [f"{prefix}/{name}" for name in sorted(files)]


def write_local(folder, files: dict[str, bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [str(folder / name) for name in sorted(files)]
