"""`animegan data pack --decoded`: shards of the pixels the pipeline would decode, trained on with no
decoding; their manifest is as untrusted as any pack's."""

from __future__ import annotations

import itertools
import json
import posixpath

import numpy as np
import pytest
import tensorflow as tf

from animegan.data.decode import decode_image
from animegan.data.packing import pack
from animegan.data.pipeline import ReadStats, training_dataset
from animegan.data.pixel_cache import IMAGE_BYTES, PixelCache
from animegan.data.sources import open_source
from tests.support.images import encode, pattern, write_folder


@pytest.fixture
def packs(tmp_path):
    """A folder of 20 images (80x80, so resized; one undecodable) packed twice: encoded and decoded."""
    folder = tmp_path / "images"
    write_folder(folder, 19, "PNG", size=80)
    undecodable = bytearray(encode(pattern(seed=5), "PNG"))
    for position in range(60, len(undecodable) - 40):
        undecodable[position] ^= 0x5A
    (folder / "99-undecodable.png").write_bytes(bytes(undecodable))
    decoded = pack(str(folder), str(tmp_path / "decoded"), shard_bytes=5 * IMAGE_BYTES, decoded=True,
                   log=lambda message: None)
    return folder, tmp_path / "decoded", decoded


def original_pixels(folder, item: str) -> np.ndarray:
    """What the pipeline decodes the source file behind a pack item to (members are <position>-<file name>)."""
    name = posixpath.basename(item).split("-", 1)[1]
    return decode_image(tf.constant((folder / name).read_bytes())).numpy()


def test_a_decoded_pack_holds_the_pipelines_pixels_and_skips_what_cannot_be_decoded(packs):
    folder, url, result = packs
    assert result.images == 19 and result.shards == 5  # 4 images a shard: tar headers leave no room for a 5th
    assert len(result.skipped) == 1 and "99-undecodable.png: could not be decoded" in result.skipped[0]
    manifest = json.loads((url / "manifest.json").read_text())
    assert manifest["decoded"] is True
    source = open_source(str(url))
    assert source.decoded
    items = source.list_items()
    for item, data in source.read(items):
        assert np.array_equal(np.frombuffer(data, np.uint8).reshape(64, 64, 3), original_pixels(folder, item))


def test_training_on_a_decoded_pack_gives_its_pixels_with_or_without_the_cache(packs, tmp_path):
    folder, url, _ = packs
    source = open_source(str(url))
    items = source.list_items()

    def batches(cache=None, count=12):  # a little over 2 epochs of 4 batches of 4 (3 left over each epoch)
        dataset = training_dataset(source, items, batch_size=4, seed=1, cache=cache, recorded=False)
        return [batch.numpy() for batch in itertools.islice(iter(dataset), count)]

    plain = batches()
    expected = {item: original_pixels(folder, item) for item in items}
    for batch in plain[:4]:
        for image in batch:
            assert any(np.array_equal(image, pixels) for pixels in expected.values())
    cache = PixelCache("decoded", len(items), 1 << 30, str(tmp_path / "spill"))
    cached = batches(cache)
    assert all(np.array_equal(want, got) for want, got in zip(plain, cached))
    assert cache.decoded == len(items)


def test_a_decoded_pack_reads_no_image_decoder_input(packs):
    """Its members are not images: the byte checks for encoded images must not be applied to them."""
    _, url, _ = packs
    source = open_source(str(url))
    stats = ReadStats()
    dataset = training_dataset(source, source.list_items(), batch_size=4, seed=0, stats=stats, repeat=False,
                               recorded=False)
    assert sum(len(batch) for batch in dataset) == 16 and stats.skipped == 0 and stats.read == 19


def edit_manifest(url, change) -> None:
    manifest = json.loads((url / "manifest.json").read_text())
    change(manifest)
    (url / "manifest.json").write_text(json.dumps(manifest))


def test_a_decoded_manifest_with_a_bad_offset_is_refused_with_one_line(packs):
    _, url, _ = packs

    def overlap(manifest):
        members = manifest["shards"][0]["members"]
        members[1][1] = members[0][1] + 100  # inside the member before it

    edit_manifest(url, overlap)
    with pytest.raises(ValueError, match=r"damaged: shard-00000\.tar member .* overlaps the member before it") as error:
        open_source(str(url))
    assert "\n" not in str(error.value)


def test_a_decoded_manifest_with_a_wrong_member_size_is_refused_with_one_line(packs):
    _, url, _ = packs

    def shrink(manifest):
        manifest["shards"][1]["members"][0][2] = IMAGE_BYTES - 1

    edit_manifest(url, shrink)
    with pytest.raises(ValueError, match=rf"member .* has {IMAGE_BYTES - 1} bytes, not one decoded image's "
                                         rf"{IMAGE_BYTES}: refusing the pack") as error:
        open_source(str(url))
    assert "\n" not in str(error.value)


def test_a_decoded_flag_that_is_not_a_boolean_is_refused(packs):
    _, url, _ = packs
    edit_manifest(url, lambda manifest: manifest.update(decoded="yes"))
    with pytest.raises(ValueError, match=r'damaged: "decoded" is not true or false'):
        open_source(str(url))


def test_resuming_a_pack_in_the_other_mode_is_refused(packs):
    folder, url, _ = packs
    with pytest.raises(ValueError, match=r"already holds a different pack: decoded True \(now False\)"):
        pack(str(folder), str(url), shard_bytes=5 * IMAGE_BYTES, log=lambda message: None)
