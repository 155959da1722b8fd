"""Generation at scale: the same bytes whatever the number of workers, resuming, formats, bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from animegan.cli import main
from animegan.distributed_generation import GenerationRequest, generate_many, plan_chunks, split_contiguous
from animegan.generation_output import OutputNaming, read_images
from animegan.generation import generate_images, load_generator
from animegan.image_shards import unpack_shard
from tests.conftest import REPO
from tests.support.generators import write_exported_generator

QUIET = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(write_exported_generator(tmp_path_factory.mktemp("run") / "workdir", step=30))


@pytest.fixture(scope="module")
def generator(workdir):
    return load_generator(workdir)


def image_files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if name.endswith(".png") and not name.startswith(".")}


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_k1_and_k2_write_the_same_bytes_to_local_and_object_storage(workdir, tmp_path, bucket, ray_cluster):
    local = tmp_path / "one"
    one = generate_many(GenerationRequest(workdir, str(local), count=150, seed=7, batch_size=16), log=QUIET)
    lines = []
    two = generate_many(GenerationRequest(workdir, f"{bucket}/two", count=150, seed=7, batch_size=16, workers=2),
                        log=lines.append)
    assert one.generated_images == two.generated_images == 150
    assert any(line.startswith("generate: 150/150 images (100%)") for line in lines)

    import gcsfs
    remote = gcsfs.GCSFileSystem()
    remote_names = sorted(name.rsplit("/", 1)[1] for name in remote.ls(f"{bucket[5:]}/two"))
    expected = [f"{index:06d}.png" for index in range(150)]
    assert remote_names == expected + ["manifest.json"]
    local_files = image_files(local)
    assert list(local_files) == expected
    for name, data in local_files.items():
        assert remote.cat_file(f"{bucket[5:]}/two/{name}") == data, name
    # Different indices are different images: the comparison above is not trivially true.
    assert len(set(local_files.values())) == 150

    manifest = json.loads(remote.cat_file(f"{bucket[5:]}/two/manifest.json"))
    assert manifest["status"] == "complete"
    assert (manifest["count"], manifest["seed"], manifest["generator_step"], manifest["format"]) == (150, 7, 30, "png")
    assert manifest["checkpoint"] == workdir and manifest["naming"]["file"] == "{index:06d}.png"
    assert manifest["workers"] == 2


def test_images_match_the_generator_and_do_not_depend_on_the_batch_size(workdir, generator, tmp_path):
    generate_many(GenerationRequest(workdir, str(tmp_path / "b8"), count=40, seed=3, batch_size=8), log=QUIET)
    generate_many(GenerationRequest(workdir, str(tmp_path / "b32"), count=40, seed=3, batch_size=32), log=QUIET)
    small, large = image_files(tmp_path / "b8"), image_files(tmp_path / "b32")
    reference = generate_images(generator, 3, range(40), batch_size=8)
    for index, name in enumerate(small):
        assert np.array_equal(decode(small[name]), reference[index])
        # Other batch shapes may sum in another order: at most float rounding, in practice nothing.
        difference = np.abs(decode(large[name]).astype(int) - reference[index])
        assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3


def test_resume_writes_only_the_missing_files(workdir, tmp_path):
    out = tmp_path / "images"
    generate_many(GenerationRequest(workdir, str(out), count=40, batch_size=8), log=QUIET)
    before = image_files(out)
    # Old times on every file, so a file written again is seen whatever the clock's resolution.
    for name in before:
        os.utime(out / name, ns=(1_000_000_000, 1_000_000_000))
    removed = ["000003.png", "000017.png", "000039.png"]
    for name in removed:
        (out / name).unlink()
    (out / ".tmp-abc000004.png").write_bytes(b"\x89PNG half")  # an interrupted write's leftover

    lines = []
    summary = generate_many(GenerationRequest(workdir, str(out), count=40, batch_size=8), log=lines.append)

    assert summary.generated_images == 3 and summary.existing_files == 37
    assert lines[0].startswith("37 of 40 files are already in")
    assert image_files(out) == before
    rewritten = sorted(name for name in before if os.stat(out / name).st_mtime_ns != 1_000_000_000)
    assert rewritten == removed
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]


def test_an_interrupted_run_resumes_without_regenerating(workdir, generator, tmp_path):
    out = tmp_path / "killed"
    count = 1000  # seconds of work: the kill must come while files are still being written
    command = [sys.executable, "-m", "animegan", "generate", "--checkpoint", workdir, "--num", str(count),
               "--out", str(out), "--batch-size", "16"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and image_files(out)):
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # A write cut short leaves only a temporary file (.tmp-*), never a partial image.
    survivors = list(image_files(out))
    assert 0 < len(survivors) < count
    for name in survivors:
        os.utime(out / name, ns=(1_000_000_000, 1_000_000_000))

    summary = generate_many(GenerationRequest(workdir, str(out), count=count, batch_size=16), log=QUIET)

    assert summary.generated_images == count - len(survivors)
    assert all(os.stat(out / name).st_mtime_ns == 1_000_000_000 for name in survivors)
    files = image_files(out)
    assert len(files) == count and not [name for name in os.listdir(out) if name.startswith(".tmp-")]
    reference = generate_images(generator, 0, range(count), batch_size=16)
    for index, (name, data) in enumerate(files.items()):
        assert np.array_equal(decode(data), reference[index]), name
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_resume_on_object_storage_writes_only_the_missing_objects(workdir, bucket):
    import gcsfs

    out = f"{bucket}/images"
    generate_many(GenerationRequest(workdir, out, count=20, batch_size=8), log=QUIET)
    remote = gcsfs.GCSFileSystem()
    generations = {entry["name"]: entry["generation"] for entry in remote.ls(out[5:], detail=True)}
    remote.rm([f"{out[5:]}/000002.png", f"{out[5:]}/000011.png"])

    summary = generate_many(GenerationRequest(workdir, out, count=20, batch_size=8), log=QUIET)

    assert summary.generated_images == 2
    remote.invalidate_cache()
    after = {entry["name"]: entry["generation"] for entry in remote.ls(out[5:], detail=True)}
    changed = sorted(name.rsplit("/", 1)[1] for name in after if after[name] != generations[name])
    assert changed == ["000002.png", "000011.png", "manifest.json"]


def test_another_job_in_the_folder_is_refused_unless_overwritten(workdir, tmp_path):
    out = str(tmp_path / "images")
    generate_many(GenerationRequest(workdir, out, count=8, seed=0, batch_size=8), log=QUIET)
    with pytest.raises(ValueError, match="already holds images generated with seed 0, not 1; use another --out"):
        generate_many(GenerationRequest(workdir, out, count=8, seed=1, batch_size=8), log=QUIET)
    with pytest.raises(ValueError, match="generated with format 'png', not 'jpg'"):
        generate_many(GenerationRequest(workdir, out, count=8, image_format="jpg"), log=QUIET)

    summary = generate_many(GenerationRequest(workdir, out, count=8, seed=1, batch_size=8, overwrite=True),
                            log=QUIET)
    assert summary.generated_images == 8
    assert json.loads((tmp_path / "images" / "manifest.json").read_text())["seed"] == 1
    # More images of the same job extend it: image i does not depend on the count.
    assert generate_many(GenerationRequest(workdir, out, count=12, seed=1, batch_size=8),
                         log=QUIET).generated_images == 4


def test_image_files_without_a_manifest_are_not_trusted(workdir, tmp_path):
    (tmp_path / "000000.png").write_bytes(b"something else")
    with pytest.raises(ValueError, match="holds 1 image files but no manifest.json"):
        generate_many(GenerationRequest(workdir, str(tmp_path), count=4), log=QUIET)


def test_shards_are_tars_of_the_same_pngs(workdir, tmp_path):
    generate_many(GenerationRequest(workdir, str(tmp_path / "png"), count=50, seed=2, batch_size=16), log=QUIET)
    generate_many(GenerationRequest(workdir, str(tmp_path / "tar"), count=50, seed=2, batch_size=16,
                                    image_format="shards", images_per_shard=20), log=QUIET)
    names = sorted(os.listdir(tmp_path / "tar"))
    assert names == ["manifest.json", "shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    pngs = image_files(tmp_path / "png")
    members = {}
    for shard, first in [("shard-00000.tar", 0), ("shard-00001.tar", 20), ("shard-00002.tar", 40)]:
        content = unpack_shard((tmp_path / "tar" / shard).read_bytes())
        assert [name for name, _ in content] == [f"{index:06d}.png" for index in range(first, min(first + 20, 50))]
        members.update(content)
    assert members == pngs
    manifest = json.loads((tmp_path / "tar" / "manifest.json").read_text())
    assert manifest["files"][2] == {"name": "shard-00002.tar", "first": 40, "count": 10}
    naming = OutputNaming(50, "shards", 20)
    assert np.array_equal(read_images(str(tmp_path / "tar"), naming, [45, 3])[0], decode(pngs["000045.png"]))


def test_jpg_files_and_the_grid_from_the_command_line(workdir, tmp_path, capsys):
    status = main(["generate", "--checkpoint", workdir, "--num", "10", "--out", str(tmp_path / "jpg"),
                   "--format", "jpg", "--grid", str(tmp_path / "grid.png")])
    assert status == 0
    names = sorted(os.listdir(tmp_path / "jpg"))
    assert names == [f"{index:06d}.jpg" for index in range(10)] + ["manifest.json"]
    with Image.open(tmp_path / "jpg" / "000009.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (64, 64))
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (4 * 66 + 2, 3 * 66 + 2)  # 10 images: 4 columns, 3 rows, 2-pixel gaps
    assert "Wrote 10 images from" in capsys.readouterr().out


def test_work_is_split_into_contiguous_balanced_batch_aligned_ranges():
    naming = OutputNaming(1000, "png")
    chunks = plan_chunks(list(range(1000)), naming, batch_size=64, workers=3)
    assert all(chunk[0] % 64 == 0 for chunk in chunks)  # no generator batch is split between calls
    runs = split_contiguous(chunks, naming, 3)
    ranges = [[number for chunk in run for number in chunk] for run in runs]
    assert [number for numbers in ranges for number in numbers] == list(range(1000))
    assert all(numbers == list(range(numbers[0], numbers[-1] + 1)) for numbers in ranges)
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 2 * 64
    # Fewer chunks than workers: no worker is started for nothing.
    assert len(split_contiguous([[0], [1]], OutputNaming(2, "png"), 4)) == 2


@pytest.mark.parametrize("arguments, message", [
    (["--num", "0"], "--num must be a positive integer, got 0"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer, got -1"),
    (["--workers", "0"], "--workers must be a positive integer, got 0"),
    (["--images-per-shard", "0"], "--images-per-shard must be a positive integer, got 0"),
    (["--seed", "-2"], "--seed must not be negative, got -2"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker must be positive, got 0.0"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker must not be negative, got -1.0"),
])
def test_bad_generate_arguments_are_one_line_errors(workdir, tmp_path, capsys, arguments, message):
    status = main(["generate", "--checkpoint", workdir, "--out", str(tmp_path / "out"), *arguments])
    assert status == 2
    assert capsys.readouterr().err == f"animegan: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_missing_workdir_and_unknown_format_are_refused(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"animegan: error: no such workdir: {tmp_path / 'nothing'}\n"
    with pytest.raises(ValueError, match="--format must be one of png, jpg, shards, got 'bmp'"):
        GenerationRequest("w", "o", count=1, image_format="bmp").validate()


def test_more_workers_than_the_cluster_has_fails_at_once(workdir, tmp_path, ray_cluster):
    with pytest.raises(ValueError, match="3 workers x 1 CPUs need 3 CPUs, but the Ray cluster has 2"):
        generate_many(GenerationRequest(workdir, str(tmp_path / "out"), count=600, workers=3, batch_size=16),
                      log=QUIET)


@pytest.mark.ray
def test_a_real_run_generates_from_its_export_and_from_its_latest_checkpoint(tmp_path, tiny_run):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.layout.workdir, workdir)  # a real training run's workdir, 60 steps
    exported = generate_many(GenerationRequest(str(workdir), str(tmp_path / "exported"), count=12, batch_size=8),
                             log=QUIET)
    assert (exported.generator_source, exported.generator_step) == (str(workdir / "generator.keras"), 60)

    # Without the export, the latest checkpoint's EMA generator is used: the same weights.
    (workdir / "generator.keras").unlink()
    from_checkpoint = generate_many(GenerationRequest(str(workdir), str(tmp_path / "checkpoint"), count=12,
                                                      batch_size=8), log=QUIET)
    assert from_checkpoint.generator_source.endswith("checkpoint-00000060")
    manifest = json.loads((tmp_path / "checkpoint" / "manifest.json").read_text())
    assert (manifest["generator_kind"], manifest["generator_step"]) == ("checkpoint", 60)
    assert image_files(tmp_path / "checkpoint") == image_files(tmp_path / "exported")
