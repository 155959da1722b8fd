"""Streaming images from object storage: sharding by rank, concurrent and packed reads, storage failures.

All storage here is the real GCS emulator (fixtures `gcs_emulator`, `bucket`), reached by gcsfs.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import defaultdict

import numpy as np
import pytest

from animegan import cli, storage
from animegan.data.packing import PackProgress, pack
from animegan.data.pipeline import (
    RECORD_VARIABLE,
    DataPosition,
    ReadStats,
    encoded_images,
    epoch_order,
    next_batch,
    training_dataset,
    worker_shard,
)
from animegan.data.shards import PackedSource
from animegan.data.sources import (
    CONCURRENCY_VARIABLE,
    FileSource,
    list_images,
    open_source,
    prefetched,
    read_concurrency,
)
from animegan.retries import StorageError
from tests.support.bucket_data import damaged_bytes, image_bytes, upload, write_local


def quiet_pack(source: str, destination: str, shard_bytes: int = 8 << 10):
    import io

    return pack(source, destination, shard_bytes=shard_bytes, log=lambda message: None,
                progress=PackProgress(0, stream=io.StringIO()))


# ----------------------------------------------------------------------------- sharding (pure)

@pytest.mark.parametrize("num_items, world_size, runs", [
    (40, 2, None), (41, 3, None), (40, 2, [8, 8, 8, 8, 8]), (43, 4, [10, 7, 13, 13]),
    (30, 3, [30]),  # fewer shards than workers: the one shard is split between them
])
def test_worker_shards_are_disjoint_equal_and_cover_all_but_a_remainder(num_items, world_size, runs):
    for epoch in range(3):
        order = epoch_order(num_items, seed=5, epoch=epoch, runs=runs)
        assert sorted(order) == list(range(num_items))
        shards = [set(worker_shard(order, rank, world_size)) for rank in range(world_size)]
        assert len({len(shard) for shard in shards}) == 1, "every worker must get the same number of items"
        assert sum(len(shard) for shard in shards) == len(set().union(*shards))
        assert num_items - len(set().union(*shards)) == num_items % world_size


def test_packed_runs_stay_whole_and_in_order_while_shards_and_boundaries_move():
    runs = [5, 5, 5, 5]
    orders = [epoch_order(20, seed=0, epoch=epoch, runs=runs) for epoch in range(4)]
    for order in orders:
        # Read as sequential runs: each next item is the next in its shard, except
        # where one shard ends and another starts (at most len(runs) + 1 places, with the rotation).
        breaks = sum(1 for a, b in zip(order, order[1:]) if b != a + 1)
        assert breaks <= len(runs)
    assert len({tuple(order) for order in orders}) == 4
    # One shard, two workers: the boundary between their halves moves from epoch to epoch.
    firsts = {int(worker_shard(epoch_order(20, seed=0, epoch=epoch, runs=[20]), 0, 2)[0]) for epoch in range(6)}
    assert len(firsts) > 1


def test_runs_that_do_not_add_up_are_rejected():
    with pytest.raises(ValueError, match="runs of 9 items in all cannot order 10 items"):
        epoch_order(10, seed=0, epoch=0, runs=[4, 5])


def test_packed_streams_resume_exactly_where_they_stopped(tmp_path):
    write_local(tmp_path / "raw", image_bytes(60))
    quiet_pack(str(tmp_path / "raw"), str(tmp_path / "packed"))
    source = open_source(str(tmp_path / "packed"))
    items = list_images(source)
    assert len(source.sequential_runs(items)) > 3

    def stream(skip: int) -> list[bytes]:
        return list(encoded_images(source, items, rank=1, world_size=2, seed=3, repeat=False,
                                   position=DataPosition(epoch=2, skip_items=skip), shuffle_window=8))

    whole = stream(0)
    assert len(whole) == 30
    # Shuffled within windows: not simply the shards' order.
    in_shard_order = [data for _, data in source.read([items[i] for i in
                                                       worker_shard(epoch_order(60, 3, 2, source.sequential_runs(items)), 1, 2)])]
    assert whole != in_shard_order and sorted(whole) == sorted(in_shard_order)
    for skip in [5, 8, 13, 29]:
        assert stream(skip) == whole[skip:]


# ----------------------------------------------------------------------------- reading from the bucket

def test_read_concurrency_is_low_for_the_emulator_and_configurable(monkeypatch):
    assert read_concurrency() == 4  # STORAGE_EMULATOR_HOST is set by conftest
    monkeypatch.setenv(CONCURRENCY_VARIABLE, "64")
    assert read_concurrency() == 64
    assert FileSource("gs://any-bucket/faces").concurrency == 64
    for bad in ["0", "many", "-3"]:
        monkeypatch.setenv(CONCURRENCY_VARIABLE, bad)
        with pytest.raises(ValueError, match=f"{CONCURRENCY_VARIABLE} must be a positive integer, got '{bad}'"):
            read_concurrency()


def test_prefetching_keeps_order_raises_errors_in_place_and_stops_with_its_consumer():
    fetched = []

    def fetch(request: int) -> int:
        fetched.append(request)
        if request == 3:
            raise ConnectionResetError("request 3 failed")
        return request * 10

    results = prefetched(fetch, range(8), depth=1)
    assert [next(results) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(ConnectionResetError, match="request 3 failed"):
        next(results)
    assert max(fetched) == 3, "nothing is fetched after an error"

    fetched.clear()
    results = prefetched(fetch, range(4, 1000), depth=2)
    assert next(results) == 40
    results.close()
    time.sleep(0.5)
    assert len(fetched) <= 5, "the consumer stopped: so does the fetching"


def test_corrupt_objects_in_the_bucket_are_skipped_and_counted(bucket):
    good = upload(f"{bucket}/faces", image_bytes(20, "JPEG"))
    upload(f"{bucket}/faces", damaged_bytes())
    source = open_source(f"{bucket}/faces")
    items = list_images(source)
    assert len(items) == 23
    stats = ReadStats()
    images = list(encoded_images(source, items, rank=0, world_size=1, seed=0, stats=stats, repeat=False))
    assert len(images) == stats.read == 20
    assert sorted(images) == sorted(image_bytes(20, "JPEG").values())
    assert stats.skipped == 3
    assert {example.split(":")[0].rsplit("/", 1)[1] for example in stats.examples} == set(damaged_bytes())
    assert any("truncated JPEG" in example for example in stats.examples)
    assert len(good) == 20


def test_an_object_deleted_after_listing_is_skipped_and_counted(bucket):
    upload(f"{bucket}/faces", image_bytes(10))
    source = open_source(f"{bucket}/faces")
    items = list_images(source)
    source.fs.rm(items[3])
    stats = ReadStats()
    images = list(encoded_images(source, items, rank=0, world_size=1, seed=0, stats=stats, repeat=False))
    assert len(images) == 9 and stats.skipped == 1
    assert "FileNotFoundError" in stats.examples[0]


@pytest.mark.parametrize("url", ["gs://no-such-bucket-animegan/faces", "{bucket}/no-such-prefix"])
def test_a_missing_bucket_or_prefix_fails_within_seconds(bucket, tmp_path, capsys, url):
    url = url.format(bucket=bucket)
    started = time.monotonic()
    status = cli.main(["train", "--data", url, "--workdir", str(tmp_path / "run"), "--dry-run"])
    elapsed = time.monotonic() - started
    assert status == 2
    assert f"animegan: error: no such file, folder, bucket or prefix: {url}" in capsys.readouterr().err
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_a_read_survives_the_storage_going_away_and_coming_back(gcs_emulator, bucket):
    files = image_bytes(48)
    upload(f"{bucket}/faces", files)
    quiet_pack(f"{bucket}/faces", f"{bucket}/packed")
    raw = FileSource(f"{bucket}/faces", concurrency=1)  # rounds of 8 objects: most are fetched after the stop
    packed = PackedSource(f"{bucket}/packed", chunk_bytes=4096)  # small ranges: many requests
    for source in [raw, packed]:
        items = list_images(source)
        results = source.read(items)
        first = next(results)
        gcs_emulator.stop()
        stopped = time.monotonic()
        restarter = threading.Timer(2.0, gcs_emulator.start)
        restarter.start()
        try:
            rest = list(results)
        finally:
            restarter.join()
        took = time.monotonic() - stopped
        read = dict([first, *rest])
        assert list(read) == items
        assert not [item for item, data in read.items() if isinstance(data, Exception)]
        assert sorted(read.values()) == sorted(files.values())
        assert took >= 2.0, f"{type(source).__name__} finished in {took:.1f} s: it never waited for the storage"


def test_an_image_that_fails_only_at_decoding_is_dropped_not_fatal(tmp_path):
    files = image_bytes(9)
    # Passes the cheap byte check (JPEG signature, end marker) but is not a JPEG inside.
    files["00004.png"] = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    write_local(tmp_path / "faces", files)
    source = open_source(str(tmp_path / "faces"))
    batches = list(training_dataset(source, list_images(source), batch_size=1, repeat=False))
    assert len(batches) == 8
    assert all(batch.shape == (1, 64, 64, 3) for batch in batches)


def test_a_missing_shard_ends_training_data_with_an_error_naming_it(bucket):
    upload(f"{bucket}/faces", image_bytes(24))
    quiet_pack(f"{bucket}/faces", f"{bucket}/packed")
    source = open_source(f"{bucket}/packed")
    items = list_images(source)
    storage.filesystem(f"{bucket}/packed/shard-00001.tar")[0].rm(f"{bucket[5:]}/packed/shard-00001.tar")
    stats = ReadStats()
    iterator = iter(training_dataset(source, items, batch_size=4, stats=stats))
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"packed shard {bucket}/packed/shard-00001.tar is missing"):
        for _ in range(100):
            next_batch(iterator, stats)
    assert time.monotonic() - started < 10


def test_public_buckets_can_be_read_without_credentials(bucket, monkeypatch):
    upload(f"{bucket}/faces", image_bytes(3))
    monkeypatch.setenv(storage.GCS_TOKEN_VARIABLE, "anon")
    fs, _ = storage.filesystem(f"{bucket}/faces")
    assert fs.credentials.method == "anon"
    source = open_source(f"{bucket}/faces")
    assert len(list(source.read(list_images(source)))) == 3


# ----------------------------------------------------------------------------- two real workers

def epoch_items(record_dir, epoch: int) -> dict[int, list[tuple[str, str]]]:
    """(item, read|skipped) per rank, for one epoch, from the workers' item records."""
    rows: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for rank in range(2):
        with open(record_dir / f"items-rank{rank}.tsv", encoding="utf-8") as file:
            for row_epoch, item, status in csv.reader(file, delimiter="\t"):
                if int(row_epoch) == epoch:
                    rows[rank].append((item, status))
    return rows


def train_two_workers(data: str, tmp_path, monkeypatch):
    from animegan.config import TrainConfig
    from animegan.launcher import run_training

    record_dir = tmp_path / "record"
    monkeypatch.setenv(RECORD_VARIABLE, str(record_dir))
    # 40 images, 2 workers x 4: an epoch is 5 steps; the 6th needs epoch 1, so epoch 0 was read whole.
    outcome = run_training(TrainConfig(
        data=data, workdir=str(tmp_path / "run"), steps=6, batch_size=8, noise_dim=16, generator_width=8,
        discriminator_width=8, log_every=3, checkpoint_every=6, sample_every=6, workers=2, cpus_per_worker=1,
        max_failures=0,
    ), log=lambda *args: None)
    assert outcome.status == "finished" and outcome.step == 6
    index = json.loads((tmp_path / "run" / "data-index.json").read_text())
    return record_dir, index["items"]


def assert_disjoint_and_covering(record_dir, all_items: list[str]) -> None:
    epoch0 = epoch_items(record_dir, 0)
    first, second = ({item for item, _ in epoch0[rank]} for rank in range(2))
    assert len(epoch0[0]) == len(epoch0[1]) == len(all_items) // 2, "each worker reads its own half, once"
    assert not first & second, f"both workers read {sorted(first & second)[:3]}"
    assert first | second == set(all_items)
    assert all(status == "read" for rank in range(2) for _, status in epoch0[rank])


@pytest.mark.ray
def test_two_workers_train_from_raw_objects_in_a_bucket_on_disjoint_shards(ray_cluster, bucket, tmp_path,
                                                                           monkeypatch):
    upload(f"{bucket}/faces", image_bytes(40, "JPEG"))
    record_dir, items = train_two_workers(f"{bucket}/faces", tmp_path, monkeypatch)
    assert len(items) == 40 and items[0].startswith(f"{bucket[5:]}/faces/")
    assert_disjoint_and_covering(record_dir, items)
    # The next epoch is shuffled again: the workers' halves are not the same as in epoch 0.
    assert {item for item, _ in epoch_items(record_dir, 1)[0]} != {item for item, _ in epoch_items(record_dir, 0)[0]}


@pytest.mark.ray
def test_two_workers_train_from_packed_shards_in_a_bucket_on_disjoint_shards(ray_cluster, bucket, tmp_path,
                                                                             monkeypatch):
    upload(f"{bucket}/faces", image_bytes(40, "JPEG"))
    result = quiet_pack(f"{bucket}/faces", f"{bucket}/packed")
    assert result.shards > 2
    record_dir, items = train_two_workers(f"{bucket}/packed", tmp_path, monkeypatch)
    assert len(items) == 40 and items[0].startswith("shard-00000.tar/")
    assert_disjoint_and_covering(record_dir, items)
    # Each worker read its part as a few sequential runs of shards, not item by item.
    for rank, rows in epoch_items(record_dir, 0).items():
        shards_in_order = [item.split("/")[0] for item, _ in rows]
        assert len(set(shards_in_order)) < len(rows) / 2


@pytest.mark.ray
def test_storage_failing_for_good_ends_the_job_with_one_line_naming_the_url(ray_cluster, bucket, tmp_path, capsys):
    upload(f"{bucket}/faces", image_bytes(40, "JPEG"))
    quiet_pack(f"{bucket}/faces", f"{bucket}/packed")
    storage.filesystem(f"{bucket}/packed/shard-00001.tar")[0].rm(f"{bucket[5:]}/packed/shard-00001.tar")
    status = cli.main(["train", "--data", f"{bucket}/packed", "--workdir", str(tmp_path / "run"), "--steps", "6",
                       "--batch-size", "8", "--noise-dim", "16", "--generator-width", "8", "--discriminator-width", "8",
                       "--workers", "2", "--cpus-per-worker", "1", "--max-failures", "0"])
    assert status == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("animegan: error:")]
    assert errors == [f"animegan: error: packed shard {bucket}/packed/shard-00001.tar is missing; the pack is "
                      f"damaged: run `animegan data pack {bucket}/faces {bucket}/packed` again to repair it"]
