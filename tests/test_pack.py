"""`animegan data pack`: shard format, manifest, resume after an interruption, and reading packs back."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from animegan import cli, storage
from animegan.data.packing import PackProgress, pack, parse_size
from animegan.data.shards import PackedSource, ShardWriter, load_manifest
from animegan.data.sources import list_images, open_source
from tests.support.bucket_data import damaged_bytes, image_bytes, upload, write_local

QUIET = dict(log=lambda message: None)


def quiet_progress(total=0) -> PackProgress:
    return PackProgress(total, stream=io.StringIO())


def originals_by_member(source: PackedSource, files: dict[str, bytes]) -> dict[str, bytes]:
    """Each packed item's original bytes, matched by the source file name the member keeps."""
    return {item: files[item.rsplit("/", 1)[1].split("-", 1)[1]] for item in source.list_items()}


def test_shard_offsets_point_at_each_image_and_the_shard_is_a_plain_tar():
    payloads = {"a.jpg": b"x", "b.png": b"y" * 511, "c.png": b"z" * 512, "d.jpg": b"w" * 513, "e.jpg": b"v" * 3000}
    writer = ShardWriter("shard-00000.tar")
    for name, data in payloads.items():
        writer.add(name, data)
    shard = writer.finish()
    for name, offset, size in writer.members:
        assert shard[offset:offset + size] == payloads[name]
    with tarfile.open(fileobj=io.BytesIO(shard)) as archive:
        assert archive.getnames() == list(payloads)
        assert {name: archive.extractfile(name).read() for name in payloads} == payloads


def test_shards_are_byte_for_byte_reproducible():
    def build() -> bytes:
        writer = ShardWriter("shard-00000.tar")
        for name, data in image_bytes(3).items():
            writer.add(name, data)
        return writer.finish()

    assert build() == build()


@pytest.mark.parametrize("text, expected", [
    ("64MB", 64_000_000), ("64MiB", 64 << 20), ("1.5GB", 1_500_000_000), ("4096", 4096), ("16 kib", 16384),
])
def test_shard_sizes_accept_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lots", "must be a size such as 64MB"),
    ("-5MB", "must be a size such as 64MB"),
    ("64XB", "must be a size such as 64MB"),
    ("100", "at least 4096 bytes"),
])
def test_bad_shard_sizes_are_rejected_with_a_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_a_local_folder_packs_into_shards_that_read_back_byte_for_byte(tmp_path):
    files = {**image_bytes(30), **damaged_bytes()}
    write_local(tmp_path / "raw", files)
    result = pack(str(tmp_path / "raw"), str(tmp_path / "packed"), shard_bytes=8 << 10,
                  progress=quiet_progress(), **QUIET)

    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["format"] == "animegan-pack"
    assert manifest["images"] == result.images == 30
    assert manifest["skipped"] == 3
    assert manifest["source"] == str(tmp_path / "raw")
    assert len(manifest["shards"]) == result.shards >= 3
    for shard in manifest["shards"]:
        data = (tmp_path / "packed" / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] <= 8 << 10
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    skipped = sorted(entry.split(":")[0].rsplit("/", 1)[1] for shard in manifest["shards"] for entry in shard["skipped"])
    assert skipped == sorted(damaged_bytes())

    for url in [str(tmp_path / "packed"), str(tmp_path / "packed" / "manifest.json")]:
        source = open_source(url)
        assert isinstance(source, PackedSource)
        items = list_images(source)
        assert len(items) == 30
        expected = originals_by_member(source, files)
        assert dict(source.read(items)) == expected
        # Any subset, in any order, reads back too (a worker's slice of a rotated epoch).
        subset = items[17:] + items[:5]
        assert [(item, data) for item, data in source.read(subset)] == [(item, expected[item]) for item in subset]


@pytest.mark.parametrize("chunk_bytes", [300, 512, 1000, 4096, 5000])
def test_packs_read_back_whatever_the_range_requests_cut(tmp_path, chunk_bytes):
    # Range requests end anywhere: inside an image, inside a header, on a block boundary.
    files = {**image_bytes(20, "JPEG"), **image_bytes(20)}
    write_local(tmp_path / "raw", files)
    pack(str(tmp_path / "raw"), str(tmp_path / "packed"), shard_bytes=64 << 10, progress=quiet_progress(), **QUIET)
    source = PackedSource(str(tmp_path / "packed"), chunk_bytes=chunk_bytes)
    items = source.list_items()
    assert dict(source.read(items)) == originals_by_member(source, files)
    assert dict(source.read(items[7:31])) == {item: originals_by_member(source, files)[item] for item in items[7:31]}


def test_the_packed_order_is_shuffled_so_shards_mix_the_source(tmp_path):
    write_local(tmp_path / "raw", image_bytes(40))
    pack(str(tmp_path / "raw"), str(tmp_path / "packed"), shard_bytes=8 << 10, progress=quiet_progress(), **QUIET)
    names = [item.rsplit("/", 1)[1].split("-", 1)[1] for item in PackedSource(str(tmp_path / "packed")).list_items()]
    assert sorted(names) == sorted(image_bytes(40))
    assert names != sorted(names)


def test_an_interrupted_pack_resumes_from_its_verified_shards(bucket):
    files = {**image_bytes(40), **damaged_bytes()}
    upload(f"{bucket}/raw", files)
    reference = pack(f"{bucket}/raw", f"{bucket}/reference", shard_bytes=8 << 10,
                     progress=quiet_progress(), **QUIET)
    assert reference.images == 40 and len(reference.skipped) == 3 and reference.shards >= 4

    # First run: interrupted (as by Ctrl-C) right after its third shard.
    written = []

    def interrupt_after_three(shard):
        written.append(shard.name)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(f"{bucket}/raw", f"{bucket}/packed", shard_bytes=8 << 10, progress=quiet_progress(),
             on_shard=interrupt_after_three, **QUIET)
    assert not storage.exists(f"{bucket}/packed/manifest.json")
    with pytest.raises(ValueError, match="the pack is incomplete"):
        list_images(open_source(f"{bucket}/packed"))
    # Damage the second shard: one flipped byte, same size.
    damaged = bytearray(storage.read_bytes(f"{bucket}/packed/shard-00001.tar"))
    damaged[700] ^= 0xFF
    storage.write_bytes(f"{bucket}/packed/shard-00001.tar", bytes(damaged))

    # Second run: the first shard is verified and kept, the rest is packed again.
    log, rewritten = [], []
    resumed = pack(f"{bucket}/raw", f"{bucket}/packed", shard_bytes=8 << 10, progress=quiet_progress(),
                   on_shard=lambda shard: rewritten.append(shard.name), log=log.append)
    assert resumed.reused_shards == 1
    assert rewritten[0] == "shard-00001.tar" and len(rewritten) == reference.shards - 1
    assert any("shard-00001.tar is damaged (SHA-256 checksum mismatch)" in line for line in log)
    assert any("1 shard(s) already written and verified" in line for line in log)

    # The resumed pack is the pack an uninterrupted run writes.
    assert load_manifest(f"{bucket}/packed").to_dict() == load_manifest(f"{bucket}/reference").to_dict()
    source = open_source(f"{bucket}/packed")
    assert dict(source.read(list_images(source))) == originals_by_member(source, files)

    # A third run finds everything verified and writes nothing.
    again = pack(f"{bucket}/raw", f"{bucket}/packed", shard_bytes=8 << 10, progress=quiet_progress(),
                 on_shard=lambda shard: pytest.fail("a verified pack was written again"), **QUIET)
    assert again.reused_shards == reference.shards


def test_a_destination_holding_another_pack_is_refused(tmp_path):
    write_local(tmp_path / "raw", image_bytes(12))
    pack(str(tmp_path / "raw"), str(tmp_path / "packed"), shard_bytes=8 << 10, progress=quiet_progress(), **QUIET)
    with pytest.raises(ValueError, match=r"already holds a different pack: seed 0 \(now 1\)"):
        pack(str(tmp_path / "raw"), str(tmp_path / "packed"), shard_bytes=8 << 10, seed=1,
             progress=quiet_progress(), **QUIET)


def test_a_folder_whose_manifest_is_not_a_pack_is_rejected(tmp_path):
    write_local(tmp_path / "raw", image_bytes(3))
    (tmp_path / "raw" / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(ValueError, match="is not an animegan pack manifest"):
        open_source(str(tmp_path / "raw"))
    (tmp_path / "raw" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        open_source(str(tmp_path / "raw"))
    with pytest.raises(ValueError, match="no pack manifest at"):
        open_source(str(tmp_path / "nowhere" / "manifest.json"))


def test_data_pack_command_reports_what_it_wrote(tmp_path, capsys):
    write_local(tmp_path / "raw", {**image_bytes(10), **damaged_bytes()})
    status = cli.main(["data", "pack", str(tmp_path / "raw"), str(tmp_path / "packed"), "--shard-size", "8KB"])
    output = capsys.readouterr().out
    assert status == 0
    assert "packing: 100% 13/13 images" in output  # progress lines when not on a terminal
    assert "Packed 10 images into" in output
    assert "Skipped 3 unreadable image(s)" in output
    assert f"animegan train --data {tmp_path / 'packed'}" in output
    assert (tmp_path / "packed" / "manifest.json").exists()


def test_data_pack_command_rejects_a_bad_shard_size(tmp_path, capsys):
    status = cli.main(["data", "pack", str(tmp_path), str(tmp_path / "packed"), "--shard-size", "huge"])
    assert status == 2
    assert "animegan: error: --shard-size must be a size such as 64MB" in capsys.readouterr().err


def test_a_pack_is_training_data_for_the_pipeline_commands(tmp_path, capsys):
    write_local(tmp_path / "raw", image_bytes(12))
    pack(str(tmp_path / "raw"), str(tmp_path / "packed"), shard_bytes=8 << 10, progress=quiet_progress(), **QUIET)
    status = cli.main(["data", "preview", "--data", str(tmp_path / "packed" / "manifest.json"), "--num", "9",
                       "--out", str(tmp_path / "grid.png")])
    assert status == 0
    assert "Wrote 9 augmented images" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (3 * 66 + 2, 3 * 66 + 2)  # 3x3 images of 64 + padding 2
