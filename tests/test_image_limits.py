"""Hostile or huge images: sizes read from headers before decoding, byte limits on files, zip members
and pack entries, and pack manifests checked against the shards they describe.

The header reader is checked against Pillow on every format and mode the pipeline reads (and on the
real faces); a 0.4 MB PNG that declares 20000x20000 pixels is skipped, with its reason, among the
real faces in a real training run whose worker stays far below 4 GB.
"""

from __future__ import annotations

import io
import json
import re
import struct
import uuid
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from animegan import storage
from animegan.config import TrainConfig
from animegan.data.decode import ImageLimits, image_format, problem_with
from animegan.data.header import read_header
from animegan.data.packing import PackProgress, pack
from animegan.data.pipeline import ReadStats, encoded_images, training_dataset
from animegan.data.shards import PackedSource
from animegan.data.sources import FileSource, Oversized, ZipSource, open_source
from tests.conftest import TINY_MODEL
from tests.support.images import encode, pattern, write_folder

HUGE_SIDE = 20_000


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A valid greyscale PNG of 20000x20000 black pixels: about 0.4 MB that decode to 400 MB of uint8
    (about 5 GB once the pipeline has made float32 RGB of it)."""
    compressor = zlib.compressobj(9)
    rows = bytes((HUGE_SIDE + 1) * 100)  # 100 rows: a filter byte and a row of zeros each
    idat = b"".join(compressor.compress(rows) for _ in range(HUGE_SIDE // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", HUGE_SIDE, HUGE_SIDE, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def save(picture: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def animation(image_format: str, frames: int, size=(37, 23)) -> bytes:
    pictures = [Image.fromarray(pattern(*size, seed=index)) for index in range(frames)]
    if image_format == "GIF":
        pictures = [picture.convert("P") for picture in pictures]
    return save(pictures[0], image_format, save_all=True, append_images=pictures[1:], duration=100, loop=0)


def pillow_cases() -> dict[str, bytes]:
    picture = Image.fromarray(pattern(37, 23))
    cases = {}
    for mode in ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]:
        cases[f"png-{mode}"] = save(picture.convert(mode), "PNG")
    for mode in ["L", "RGB", "CMYK"]:
        cases[f"jpeg-{mode}"] = save(picture.convert(mode), "JPEG", quality=90)
    cases["jpeg-progressive"] = save(picture, "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x010E] = "a description long enough to need its own segment " * 20
    cases["jpeg-exif-and-icc"] = save(picture, "JPEG", exif=exif, icc_profile=b"\0" * 3000)
    for mode in ["1", "L", "P", "RGB"]:
        cases[f"bmp-{mode}"] = save(picture.convert(mode), "BMP")
    cases["gif"] = save(picture.convert("P"), "GIF")
    cases["gif-animated"] = animation("GIF", 3)
    cases["webp-lossy"] = save(picture, "WEBP", quality=80)
    cases["webp-lossless"] = save(picture, "WEBP", lossless=True)
    cases["webp-alpha"] = save(picture.convert("RGBA"), "WEBP", quality=80)
    cases["webp-animated"] = animation("WEBP", 4)
    return cases


@pytest.mark.parametrize("name, data", sorted(pillow_cases().items()))
def test_the_header_reader_agrees_with_pillow_on_every_format_and_mode(name, data):
    header = read_header(data, image_format(data))
    with Image.open(io.BytesIO(data)) as picture:
        assert (header.width, header.height) == picture.size == (37, 23), name
        assert header.frames == getattr(picture, "n_frames", 1), name
    assert header.pixels == 37 * 23 * header.frames
    assert problem_with(data) is None


def test_a_top_down_bmp_is_as_large_as_it_says():
    data = bytearray(save(Image.fromarray(pattern(37, 23)), "BMP"))
    data[22:26] = (-23).to_bytes(4, "little", signed=True)  # rows stored top to bottom
    assert read_header(bytes(data), "bmp").height == 23
    assert Image.open(io.BytesIO(bytes(data))).size == (37, 23)


def test_the_header_reader_agrees_with_pillow_on_the_real_faces(real_faces):
    with zipfile.ZipFile(real_faces) as archive:
        names = sorted(archive.namelist())[::25]  # 400 of the 10,000
        for name in names:
            data = archive.read(name)
            header = read_header(data, image_format(data))
            assert (header.width, header.height) == Image.open(io.BytesIO(data)).size, name
            assert problem_with(data) is None, name


def test_a_20000_pixel_square_png_is_refused_from_its_header_before_decoding(huge_png):
    assert len(huge_png) < 500_000
    assert problem_with(huge_png) == ("20000x20000 pixels, above the limit of 16,000,000 pixels "
                                      "(--max-image-pixels); not decoded")
    assert problem_with(huge_png, ImageLimits(max_pixels=HUGE_SIDE ** 2)) is None  # the limit is configurable


def gif_with_frame(canvas: int, frame: int) -> bytes:
    """A GIF whose one frame descriptor is `frame` pixels square on a `canvas`-square screen."""
    screen = b"GIF89a" + struct.pack("<HHBBB", canvas, canvas, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, frame, frame, 0)
    return screen + descriptor + b"\x02\x01\x00\x00" + b"\x3b"  # LZW code size, one sub-block, trailer


@pytest.mark.parametrize("data, reason", [
    (gif_with_frame(16, 60_000), "16x16 pixels, above the limit"),  # giflib would allocate the frame
    (animation("GIF", 40, size=(800, 600)), "800x600 pixels x 40 frames, above the limit"),
    (b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"x") + png_chunk(b"IEND", b""),
     "unreadable header (PNG does not start with its IHDR chunk)"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(9) + b"\xff\xda\x00\x02" + bytes(60) + b"\xff\xd9",
     "unreadable header (JPEG has no frame header before its image data)"),
    (b"BM" + bytes(16) + (-5).to_bytes(4, "little", signed=True) + (5).to_bytes(4, "little") + bytes(30),
     "unreadable header (BMP header declares -5x5 pixels)"),
    (b"GIF89a\x10\x00", "unreadable header (GIF header is cut short)"),
], ids=["gif-frame-beyond-canvas", "gif-many-frames", "png-without-ihdr", "jpeg-without-frame-header",
        "bmp-negative-width", "gif-cut-short"])
def test_hostile_headers_are_refused_with_the_reason(data, reason):
    problem = problem_with(data, ImageLimits(max_pixels=16_000_000))
    assert problem is not None and problem.startswith(reason), problem


def test_the_pipeline_skips_and_counts_a_huge_image_among_good_ones(tmp_path, huge_png):
    write_folder(tmp_path / "images", 15)
    (tmp_path / "images" / "huge.png").write_bytes(huge_png)
    source = open_source(str(tmp_path / "images"))
    items = sorted(source.list_items())
    stats = ReadStats()
    read = list(encoded_images(source, items, rank=0, world_size=1, seed=0, stats=stats, repeat=False))
    assert len(read) == 15 and stats.skipped == 1
    assert stats.examples == [f"{tmp_path / 'images' / 'huge.png'}: 20000x20000 pixels, above the limit of "
                              f"16,000,000 pixels (--max-image-pixels); not decoded"]
    batch = next(iter(training_dataset(source, items, batch_size=8, repeat=False))).numpy()
    assert batch.shape == (8, 64, 64, 3)


# ----------------------------------------------------------------------------- byte limits


def test_a_local_file_above_the_byte_limit_is_not_read(tmp_path):
    write_folder(tmp_path / "images", 2)
    (tmp_path / "images" / "big.png").write_bytes(b"\x89PNG" + bytes(5_000_000))
    source = FileSource(str(tmp_path / "images"), max_item_bytes=1_000_000)
    read = dict(source.read(source.list_items()))
    error = read[str(tmp_path / "images" / "big.png")]
    assert isinstance(error, Oversized)
    assert str(error) == "file of 5,000,004 bytes, above the limit of 1,000,000 (--max-image-bytes); not read"
    assert sum(isinstance(data, bytes) for data in read.values()) == 2


def test_an_object_above_the_byte_limit_is_fetched_no_further_than_the_limit(bucket):
    prefix = f"{bucket}/{uuid.uuid4().hex[:8]}"
    storage.write_bytes(f"{prefix}/small.png", encode(pattern(), "PNG"))
    storage.write_bytes(f"{prefix}/big.png", b"\x89PNG" + bytes(3_000_000))
    source = FileSource(prefix, max_item_bytes=100_000)
    read = {item.rsplit("/", 1)[1]: data for item, data in source.read(source.list_items())}
    assert str(read["big.png"]) == ("file of more than 100,000 bytes, above the limit of 100,000 "
                                    "(--max-image-bytes); not read")
    assert isinstance(read["small.png"], bytes) and problem_with(read["small.png"]) is None


def zip_with(members: dict[str, bytes], path) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def test_a_zip_member_that_inflates_past_the_limit_is_skipped_unread(tmp_path):
    bomb = b"\x89PNG\r\n\x1a\n" + bytes(50_000_000)  # 50 MB of zeros, about 50 KB deflated
    url = zip_with({"faces/0.png": encode(pattern(), "PNG"), "faces/bomb.png": bomb}, tmp_path / "faces.zip")
    assert (tmp_path / "faces.zip").stat().st_size < 200_000
    source = ZipSource(url, max_item_bytes=10_000_000)
    stats = ReadStats()
    read = list(encoded_images(source, source.list_items(), rank=0, world_size=1, seed=0, stats=stats,
                               repeat=False))
    assert len(read) == 1
    assert stats.examples == ["faces/bomb.png: zip member of 50,000,008 bytes, above the limit of 10,000,000 "
                              "(--max-image-bytes); not read"]


def test_a_zip_member_that_lies_about_its_size_is_cut_at_its_declared_size_and_refused(tmp_path):
    url = zip_with({"faces/forged.png": b"\x89PNG\r\n\x1a\n" + bytes(5_000_000)}, tmp_path / "forged.zip")
    raw = bytearray((tmp_path / "forged.zip").read_bytes())
    # Declare 100 bytes in both the local header and the central directory: zipfile stops there
    # and the CRC of those 100 bytes does not match, so the member never inflates in memory.
    local = raw.index(b"PK\x03\x04")
    raw[local + 22:local + 26] = struct.pack("<I", 100)
    central = raw.index(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 100)
    (tmp_path / "forged.zip").write_bytes(bytes(raw))
    [(item, error)] = list(ZipSource(url).read(["faces/forged.png"]))
    assert type(error).__name__ == "BadZipFile" and "Bad CRC-32" in str(error)


# ----------------------------------------------------------------------------- packs


def packed_folder(where: str, tmp_path, request, images: dict[str, bytes]) -> str:
    (tmp_path / "raw").mkdir()
    for name, data in images.items():
        (tmp_path / "raw" / name).write_bytes(data)
    folder = (str(tmp_path / "packed") if where == "local"
              else f"{request.getfixturevalue('bucket')}/{uuid.uuid4().hex[:8]}/packed")
    pack(str(tmp_path / "raw"), folder, log=lambda *_: None, progress=PackProgress(0, stream=io.StringIO()))
    return folder


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_pack_entry_above_the_byte_limit_is_skipped_without_being_fetched(where, tmp_path, request):
    rng = np.random.default_rng(0)
    noisy = encode(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), "PNG")  # about 200 KB
    images = {f"{index:02d}.png": encode(pattern(seed=index), "PNG") for index in range(6)}
    folder = packed_folder(where, tmp_path, request, {**images, "noisy.png": noisy})
    source = PackedSource(folder, max_item_bytes=50_000, chunk_bytes=4096)
    read = {item.rsplit("/", 1)[1].split("-", 1)[1]: data for item, data in source.read(source.list_items())}
    assert str(read["noisy.png"]) == (f"pack entry of {len(noisy):,} bytes, above the limit of 50,000 "
                                      f"(--max-image-bytes); not read")
    assert {name: data for name, data in read.items() if name != "noisy.png"} == images


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_manifest_whose_offsets_leave_the_shard_is_refused(where, tmp_path, request):
    folder = packed_folder(where, tmp_path, request, {f"{index}.png": encode(pattern(seed=index), "PNG")
                                                       for index in range(4)})
    manifest = json.loads(storage.read_text(f"{folder}/manifest.json"))
    shard = manifest["shards"][0]
    name, offset, size = shard["members"][-1]
    shard["members"][-1] = [name, offset, 1 << 40]  # a terabyte "image"
    storage.write_text(f"{folder}/manifest.json", json.dumps(manifest))
    with pytest.raises(ValueError) as error:
        open_source(folder)
    assert str(error.value) == (f"pack manifest {folder}/manifest.json is damaged: shard-00000.tar member {name!r} "
                                f"at bytes {offset}-{offset + (1 << 40)} overlaps the member before it or lies "
                                f"outside the shard's {shard['bytes']} bytes: refusing the pack")


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_manifest_whose_shard_sizes_disagree_with_storage_is_refused(where, tmp_path, request):
    folder = packed_folder(where, tmp_path, request, {f"{index}.png": encode(pattern(seed=index), "PNG")
                                                       for index in range(4)})
    manifest = json.loads(storage.read_text(f"{folder}/manifest.json"))
    real = manifest["shards"][0]["bytes"]
    manifest["shards"][0]["bytes"] = real + 10_000_000  # members may now point past the real end
    storage.write_text(f"{folder}/manifest.json", json.dumps(manifest))
    with pytest.raises(ValueError) as error:
        open_source(folder)
    assert str(error.value) == (f"pack manifest {folder}/manifest.json says shard-00000.tar has {real + 10_000_000} "
                                f"bytes, but it has {real}: the pack is damaged; run `animegan data pack` again to "
                                f"repair it")


# ----------------------------------------------------------------------------- a real run


@pytest.mark.ray
def test_a_huge_png_among_the_real_faces_is_skipped_and_the_worker_stays_small(
        ray_cluster, real_faces, huge_png, tmp_path, capfd):
    from animegan.launcher import run_training

    with zipfile.ZipFile(real_faces) as archive:
        faces = {name: archive.read(name) for name in sorted(archive.namelist())[:63]}
    data = zip_with({**faces, "images/huge.png": huge_png}, tmp_path / "faces-and-a-bomb.zip")
    config = TrainConfig(data=data, workdir=str(tmp_path / "run"), steps=8, batch_size=8, log_every=4,
                         sample_every=8, checkpoint_every=8, cpus_per_worker=1, **TINY_MODEL)
    outcome = run_training(config)
    assert outcome.status == "finished" and outcome.step == 8
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 8 steps of 8 read the whole epoch of 64, and the pipeline reads a few epochs ahead.
    assert rows[-1]["data/skipped"] >= 1
    # Decoding it would have taken the worker past 5 GB; a worker with TensorFlow loaded uses about 1.
    peak = max(row["perf/peak_memory_mb"] for row in rows)
    print(f"peak memory of the worker: {peak:.0f} MB")
    assert 0 < peak < 4000
    assert re.search(r"worker 0: skipped \d+ unreadable image\(s\), e.g. images/huge.png: 20000x20000 pixels, "
                     r"above the limit of 16,000,000 pixels \(--max-image-pixels\); not decoded\n",
                     capfd.readouterr().out)
