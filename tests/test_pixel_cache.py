"""Decode once: the cache changes no batch (across epochs and resumes), later epochs read no files,
a changed source or decode setting gets fresh pixels, the memory budget holds (the rest spills to
disk), and images that fail stay skipped."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from animegan.config import TrainConfig
from animegan.data import pixel_cache
from animegan.data.decode import ImageLimits
from animegan.data.pipeline import DataPosition, ReadStats, training_dataset
from animegan.data.pixel_cache import DECODED, IMAGE_BYTES, SKIPPED, UNKNOWN, PixelCache, cache_key
from animegan.data.sources import open_source
from tests.support.images import encode, pattern, write_folder

BATCH = 4
COUNT = 30  # 7 batches an epoch: batches 0-6 are epoch 0, 7-13 epoch 1, ...


def undecodable_png() -> bytes:
    """Passes the byte check (signature, IEND, header) but fails to decode: its data is scrambled."""
    data = bytearray(encode(pattern(64, 64, seed=99), "PNG"))
    for position in range(60, len(data) - 40):
        data[position] ^= 0x5A
    return bytes(data)


@pytest.fixture
def folder(tmp_path):
    """30 images: most 80x80 (so they are resized), one truncated, one that fails to decode."""
    images = tmp_path / "images"
    write_folder(images, COUNT - 2, "PNG", size=80)
    (images / "90-truncated.png").write_bytes(encode(pattern(), "PNG")[:-20])
    (images / "91-undecodable.png").write_bytes(undecodable_png())
    return images


def batches(source, items, count, cache=None, position=DataPosition(), stats=None, repeat=True):
    dataset = training_dataset(source, items, batch_size=BATCH, seed=3, position=position, cache=cache,
                               stats=stats, repeat=repeat, recorded=False)
    return [batch.numpy() for batch in itertools.islice(iter(dataset), count)]


def new_cache(items, tmp_path, budget=1 << 30, block_images=4) -> PixelCache:
    return PixelCache("test", len(items), budget, str(tmp_path / "spill"), block_images=block_images)


def assert_same(expected, actual):
    assert len(expected) == len(actual)
    for number, (want, got) in enumerate(zip(expected, actual)):
        assert np.array_equal(want, got), f"batch {number} differs"


def test_batches_are_the_same_with_the_cache_across_epochs(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    uncached = batches(source, items, 20)  # almost three epochs
    cache = new_cache(items, tmp_path)
    assert_same(uncached, batches(source, items, 20, cache=cache))
    assert cache.decoded == COUNT - 2


def test_later_epochs_read_pixels_not_files(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    expected = batches(source, items, 7, position=DataPosition(epoch=1))
    cache = new_cache(items, tmp_path)
    batches(source, items, 8, cache=cache)  # one epoch and a bit: every image decoded once
    for path in folder.iterdir():
        path.write_bytes(b"not an image any more")
    # The same cache (a worker's second pass): the files are garbage now, the batches unchanged.
    assert_same(expected, batches(source, items, 7, cache=cache, position=DataPosition(epoch=1)))


def test_packed_shards_give_the_same_batches_with_the_cache(folder, tmp_path):
    from animegan.data.packing import pack

    # Several small shards: read in runs, shuffled in windows, which the cache must not reorder.
    pack(str(folder), str(tmp_path / "packed"), shard_bytes=8192, log=lambda message: None)
    source = open_source(str(tmp_path / "packed"))
    items = source.list_items()
    assert source.sequential_runs(items) is not None and len(source.sequential_runs(items)) > 2
    resume_at = DataPosition(epoch=0, skip_items=5)
    cache = new_cache(items, tmp_path)
    assert_same(batches(source, items, 16, position=resume_at),
                batches(source, items, 16, cache=cache, position=resume_at))
    assert cache.decoded == COUNT - 2


def test_a_resume_fills_a_new_cache_and_gives_the_same_batches(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    resume_at = DataPosition(epoch=1, skip_items=9)  # mid-epoch, mid-batch: the next epoch is crossed too
    uncached = batches(source, items, 12, position=resume_at)
    assert_same(uncached, batches(source, items, 12, cache=new_cache(items, tmp_path), position=resume_at))


def test_a_changed_file_or_decode_setting_changes_the_key_and_so_the_pixels(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    limits = ImageLimits()
    key = cache_key(source, items, 64, limits.max_pixels, limits.max_bytes)
    cache = pixel_cache.cache_for(source, items, limits, "1GiB")
    batches(source, items, 8, cache=cache)
    assert cache.key == key and cache.decoded == COUNT - 2

    # Other decode settings never share pixels.
    assert cache_key(source, items, 32, limits.max_pixels, limits.max_bytes) != key
    assert cache_key(source, items, 64, limits.max_pixels // 2, limits.max_bytes) != key
    assert cache_key(source, items, 64, limits.max_pixels, limits.max_bytes // 2) != key
    assert cache_key(source, items[1:], 64, limits.max_pixels, limits.max_bytes) != key
    assert pixel_cache.cache_for(source, items, limits, "1GiB") is cache  # same data: same cache

    # A file replaced in place: a new key, so a new, empty cache, and the new file's pixels.
    (folder / "00003.png").write_bytes(encode(pattern(96, 96, seed=1234), "PNG"))
    fresh = pixel_cache.cache_for(source, items, limits, "1GiB")
    assert fresh is not cache and fresh.key != key and fresh.decoded == 0
    assert_same(batches(source, items, 14), batches(source, items, 14, cache=fresh))


def test_the_memory_budget_holds_and_the_rest_spills_to_memory_mapped_files(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    budget = 10 * IMAGE_BYTES  # two blocks of 4 images fit; a third would pass the budget
    cache = new_cache(items, tmp_path, budget=budget)
    assert_same(batches(source, items, 16), batches(source, items, 16, cache=cache))
    assert cache.memory_bytes == 8 * IMAGE_BYTES <= budget
    spilled = cache.spill_files()
    assert len(spilled) == 5  # 20 of the 28 decodable images, in blocks of 4
    names = [f"pixels-{block:05d}.u8" for block in range(5)]
    assert sorted(path.name for path in (tmp_path / "spill").iterdir()) == names
    assert all((tmp_path / "spill" / name).stat().st_size == 4 * IMAGE_BYTES for name in spilled)
    # Pixels read back from disk are the decoded ones.
    on_disk = [index for index in range(len(items)) if cache.slots[index] >= cache.memory_capacity]
    assert len(on_disk) == 20
    assert np.array_equal(cache.pixels(on_disk[:3]), np.stack([cache.pixels([index])[0] for index in on_disk[:3]]))
    cache.close()
    assert not (tmp_path / "spill").exists()


def test_no_memory_at_all_keeps_everything_on_disk(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    cache = new_cache(items, tmp_path, budget=0)
    assert_same(batches(source, items, 9), batches(source, items, 9, cache=cache))
    assert cache.memory_bytes == 0 and cache.disk_bytes == 7 * 4 * IMAGE_BYTES


def test_images_that_fail_stay_skipped_without_being_read_again(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    truncated = items.index(str(folder / "90-truncated.png"))
    undecodable = items.index(str(folder / "91-undecodable.png"))
    cache = new_cache(items, tmp_path)
    batches(source, items, 8, cache=cache)
    assert cache.states[truncated] == cache.states[undecodable] == SKIPPED
    assert "truncated PNG" in cache.skip_reason(truncated)
    assert cache.skip_reason(undecodable) == "could not be decoded"
    # Made readable now, they stay skipped: the cache never reads a known item again.
    (folder / "91-undecodable.png").write_bytes(encode(pattern(), "PNG"))
    stats = ReadStats()
    batches(source, items, 7, cache=cache, position=DataPosition(epoch=1), stats=stats, repeat=False)
    assert stats.skipped == 2 and any("could not be decoded" in example for example in stats.examples)
    assert cache.states[undecodable] == SKIPPED


def test_a_cache_that_fits_in_memory_leaves_nothing_on_disk(folder, tmp_path):
    source = open_source(str(folder))
    items = source.list_items()
    cache = new_cache(items, tmp_path)
    batches(source, items, 8, cache=cache)
    assert cache.decoded == COUNT - 2 and cache.disk_bytes == 0
    assert not (tmp_path / "spill").exists()


def test_spill_folders_of_processes_that_are_gone_are_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    abandoned = tmp_path / f"animegan-pixels-{gone.pid}-0123456789ab-x"
    abandoned.mkdir()
    (abandoned / "pixels-00000.u8").write_bytes(bytes(IMAGE_BYTES))
    alive = tmp_path / f"animegan-pixels-{os.getpid()}-0123456789ab-y"
    alive.mkdir()
    unrelated = tmp_path / "animegan-pixels-notapid"
    unrelated.mkdir()
    assert pixel_cache.remove_abandoned_spills(str(tmp_path)) == [str(abandoned)]
    assert not abandoned.exists() and alive.exists() and unrelated.exists()


def test_store_and_skip_never_overwrite_a_known_item(tmp_path):
    cache = PixelCache("k", 4, 1 << 20, str(tmp_path / "spill"), block_images=2)
    first = np.full((1, 64, 64, 3), 7, np.uint8)
    cache.store([2], first)
    cache.store([2], first + 1)
    cache.skip(2, "late failure")
    assert np.array_equal(cache.pixels([2]), first) and cache.states[2] == DECODED
    assert cache.states[0] == UNKNOWN
    with pytest.raises(KeyError):
        cache.pixels([0])


@pytest.mark.parametrize("text, expected", [
    ("off", None), ("0", 0), ("25%", 0.25), ("512MiB", 512 << 20), ("4GB", 4 * 10**9), ("1.5 GiB", 3 << 29),
])
def test_cache_memory_settings(text, expected):
    assert pixel_cache.parse_cache_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1", "150%", "12 parsecs"])
def test_bad_cache_memory_is_refused_with_one_line(text):
    with pytest.raises(ValueError, match=r"^--cache-memory must be a size such as .*got") as error:
        TrainConfig(cache_memory=text).validate()
    assert "\n" not in str(error.value)


def test_a_percentage_is_of_the_available_memory_shared_by_the_local_workers():
    available = pixel_cache.available_memory()
    assert available > 0
    one, four = pixel_cache.memory_budget("20%", 1), pixel_cache.memory_budget("20%", 4)
    assert 0 < one <= available // 4 and four <= one // 3
