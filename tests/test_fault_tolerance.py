"""Fault tolerance with real processes and real storage: workers and drivers killed with SIGKILL,
broken checkpoints, the storage server crashing in the middle of a checkpoint upload, and
`--restart`. Workdirs live on the GCS emulator (gs://), as on a cluster.

The quick tests at the top need neither Ray nor a training run; the rest train a tiny model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from animegan import storage
from animegan.archive import JOURNAL, finish_interrupted
from animegan.checkpoint import (NoUsableCheckpoint, download, ensure_stored, fetch_latest, list_checkpoints,
                                 problem_with, read_state, restore, upload, write_checkpoint, written)
from animegan.cli import main as cli_main
from animegan.config import TrainConfig
from animegan.data.pipeline import DataPosition, encoded_images
from animegan.data.sources import open_source
from animegan.generation import load_generator
from animegan.launcher import resolve, run_training
from animegan.resume import RAY_SNAPSHOT, set_aside_stale_ray_snapshot
from animegan.training import data_position
from animegan.workdir import RunLayout
from tests.support.fake_checkpoints import write_checkpoint_files
from tests.support.faulty_emulator import CRASH_EXIT_CODE, FaultyEmulator
from tests.support.images import write_folder
from tests.support.processes import group_alive, is_running, kill_tree

TINY = dict(noise_dim=16, generator_width=8, discriminator_width=8)
# Two workers, 4 images each per step; 64 images make 8 steps per epoch, so resumes land mid-epoch.
TWO_WORKERS = dict(batch_size=8, workers=2, cpus_per_worker=1, log_every=5, checkpoint_every=10,
                   sample_every=1000, **TINY)
ONE_WORKER = {**TWO_WORKERS, "workers": 1}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("faces")
    write_folder(folder, 64)
    return str(folder)


def metric_steps(workdir: str) -> list[int]:
    return [json.loads(line)["step"] for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]


def wait_for(condition, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def is_complete(checkpoint_url: str) -> bool:
    return problem_with(checkpoint_url) is None


def resumes(output: str) -> list[tuple[str, int]]:
    """(checkpoint name, step) of every "Resuming from ..." that a worker printed."""
    return [(name, int(step)) for name, step in re.findall(r"Resuming from \S*/(checkpoint-\d+) at step (\d+)", output)]


def build_state(config: TrainConfig):
    from animegan.gan import build_state as build

    return build(config)


def save(state, config: TrainConfig, url: str, step: int, tmp_path: Path) -> str:
    """Writes a real checkpoint of `state` to `url` (local or gs://), as training does."""
    local = tmp_path / f"local-{step}"
    write_checkpoint(str(local), state, step=step, epoch=0, skip_items=step, config=config,
                     fixed_noise=np.zeros((4, config.noise_dim), np.float32))
    for file in local.iterdir():
        storage.upload_file(str(file), f"{url}/{file.name}")
    return url


# ----------------------------------------------------------------------------- quick tests, no Ray


def test_the_data_position_resumes_each_worker_stream_exactly_where_it_stopped(tmp_path):
    # 14 images over 2 workers: 7 per worker, 2 per worker per step, so batches straddle epochs.
    write_folder(tmp_path / "images", 14)
    source = open_source(str(tmp_path / "images"))
    items = sorted(source.list_items())
    config = TrainConfig(batch_size=4, workers=2, cpus_per_worker=1)
    for rank in range(2):
        uninterrupted = encoded_images(source, items, rank=rank, world_size=2, seed=3)
        reference = [next(uninterrupted) for _ in range(2 * 16)]
        for step in (3, 5, 7, 11):
            epoch, skip = data_position(step, len(items), config)
            resumed = encoded_images(source, items, rank=rank, world_size=2, seed=3,
                                     position=DataPosition(epoch, skip))
            assert [next(resumed) for _ in range(4)] == reference[2 * step:2 * step + 4], (rank, step)
    assert data_position(5, 14, config) == (1, 3)  # 10 items read: all 7 of epoch 0 and 3 of epoch 1


@pytest.mark.parametrize("where", ["local", "gs"])
def test_missing_truncated_or_corrupt_checkpoint_files_fall_back_to_the_newest_good_one(where, tmp_path, request):
    root = str(tmp_path / "checkpoints") if where == "local" else request.getfixturevalue("bucket") + "/checkpoints"
    config = TrainConfig(**TINY)
    state = build_state(config)
    for step in (10, 20, 30, 40):
        save(state, config, f"{root}/checkpoint-{step:08d}", step, tmp_path)
    fs, path = storage.filesystem(root)
    fs.rm_file(f"{path}/checkpoint-00000040/generator.weights.h5")  # an upload that never finished
    truncated = storage.read_bytes(f"{root}/checkpoint-00000030/optimizers.npz")
    storage.write_bytes(f"{root}/checkpoint-00000030/optimizers.npz", truncated[:100])
    corrupt = bytearray(storage.read_bytes(f"{root}/checkpoint-00000020/discriminator.weights.h5"))
    corrupt[len(corrupt) // 2] ^= 0xFF  # the right size, the wrong bytes: only the checksum can tell
    storage.write_bytes(f"{root}/checkpoint-00000020/discriminator.weights.h5", bytes(corrupt))

    messages: list[str] = []
    url, local = fetch_latest(root, log=messages.append)
    assert url == f"{root}/checkpoint-00000010"
    assert read_state(url)["step"] == 10 and (Path(local) / "generator.weights.h5").exists()
    assert messages == [
        f"skipping checkpoint {root}/checkpoint-00000040: generator.weights.h5 is missing",
        f"skipping checkpoint {root}/checkpoint-00000030: optimizers.npz is truncated (100 of {len(truncated)} bytes)",
        f"skipping checkpoint {root}/checkpoint-00000020: discriminator.weights.h5 does not match its checksum "
        f"in state.json",
    ]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_workdir_whose_checkpoints_all_fail_is_refused_instead_of_started_over(where, tmp_path, request, capsys):
    workdir = str(tmp_path / "run") if where == "local" else request.getfixturevalue("bucket") + "/run"
    checkpoints = f"{workdir}/checkpoints"
    history = "".join(json.dumps({"step": step, "loss/d": 1.0}) + "\n" for step in range(5, 41, 5))
    storage.write_text(f"{workdir}/metrics.jsonl", history)
    for step in (20, 40):
        write_checkpoint_files(f"{checkpoints}/checkpoint-{step:08d}", step, {"generator.weights.h5": bytes(100)})
    storage.write_bytes(f"{checkpoints}/checkpoint-00000040/generator.weights.h5", bytes(50))  # cut short
    storage.write_bytes(f"{checkpoints}/checkpoint-00000020/generator.weights.h5", b"\1" * 100)  # the wrong bytes
    status = cli_main(["train", "--workdir", workdir, "--steps", "60", "--noise-dim", "16", "--generator-width", "8",
                       "--discriminator-width", "8"])
    assert status == 2
    error = capsys.readouterr().err
    assert error == (
        f"animegan: error: every checkpoint in {checkpoints} fails its checks (checkpoint-00000040: "
        f"generator.weights.h5 is truncated (50 of 100 bytes); checkpoint-00000020: generator.weights.h5 does not "
        f"match its checksum in state.json); refusing to start over from step 0 over the run's history. Repair or "
        f"remove them, or run again with --restart to start over (the previous run is kept under "
        f"<workdir>/archive/)\n")
    assert storage.read_text(f"{workdir}/metrics.jsonl") == history  # nothing was cut


def test_workers_resume_from_the_driver_choice_or_a_newer_one_but_never_an_older_one(tmp_path):
    root = str(tmp_path / "checkpoints")
    for step in (10, 20):
        write_checkpoint_files(f"{root}/checkpoint-{step:08d}", step, {"generator.weights.h5": bytes([step]) * 64})
    chosen = f"{root}/checkpoint-00000020"
    assert fetch_latest(root, expected=chosen)[0] == chosen
    # A restart after this run wrote checkpoint 30: the newer one.
    write_checkpoint_files(f"{root}/checkpoint-00000030", 30, {"generator.weights.h5": bytes([30]) * 64})
    assert fetch_latest(root, expected=chosen)[0] == f"{root}/checkpoint-00000030"
    # Both broken since the driver chose: the run stops rather than resume from 10, before the
    # checkpoint it announced (whose steps it would then log again over its history).
    for step in (20, 30):
        storage.write_bytes(f"{root}/checkpoint-{step:08d}/generator.weights.h5", b"\xff" * 64)
    messages: list[str] = []
    with pytest.raises(NoUsableCheckpoint) as error:
        fetch_latest(root, log=messages.append, expected=chosen)
    assert str(error.value).startswith(f"the checkpoint the run was to resume from, {chosen}, and every newer one "
                                       f"in {root} now fail their checks (checkpoint-00000030: ")
    assert len(messages) == 2
    # Without a driver's choice (a run that started from step 0 and wrote them) the same holds:
    # checkpoints that all fail are an error, never a silent start from step 0.
    storage.write_bytes(f"{root}/checkpoint-00000010/generator.weights.h5", b"\xff" * 64)
    with pytest.raises(NoUsableCheckpoint, match=f"every checkpoint in {root} fails its checks"):
        fetch_latest(root)


def test_a_checkpoint_stored_incompletely_is_uploaded_again(bucket, tmp_path):
    config = TrainConfig(**TINY)
    url = save(build_state(config), config, f"{bucket}/checkpoints/checkpoint-00000010", 10, tmp_path)
    storage.filesystem(url)[0].rm_file(f"{url}/optimizers.npz")
    messages: list[str] = []
    ensure_stored(str(tmp_path / "local-10"), url, log=messages.append)
    assert messages == [f"checkpoint {url} was not stored whole (optimizers.npz is missing); uploading it again"]
    assert problem_with(url) is None
    ensure_stored(str(tmp_path / "local-10"), url, log=messages.append)  # whole: nothing to do
    assert len(messages) == 1


@pytest.mark.parametrize("failure", ["writing", "uploading"])
def test_a_checkpoint_that_fails_to_write_or_upload_leaves_no_temporary_folder(failure, gcs_emulator, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    config = TrainConfig(**TINY)
    state = build_state(config)
    noise = np.zeros((4, config.noise_dim), np.float32) if failure == "uploading" else "not an array"
    with pytest.raises((FileNotFoundError, ValueError)):
        with written(state, step=10, epoch=0, skip_items=10, fixed_noise=noise, config=config) as directory:
            assert "state.json" in os.listdir(directory)
            upload(directory, "gs://no-such-bucket-animegan-16/run/checkpoints/checkpoint-00000010")
    assert os.listdir(tmp_path / "tmp") == []  # before: one animegan-save-* folder per failed attempt


def test_a_worker_refuses_a_checkpoint_of_another_model_shape_naming_the_fields(tmp_path):
    saved = TrainConfig(**TINY)
    url = save(build_state(saved), saved, str(tmp_path / "checkpoints" / "checkpoint-00000010"), 10, tmp_path)
    other = saved.replace(noise_dim=32, discriminator_width=16)
    local = download(url)
    with pytest.raises(ValueError) as error:
        restore(local, build_state(other), other, source=url)
    assert str(error.value) == (
        f"the checkpoint at {url} was trained with a different model shape (noise_dim: checkpoint has 16, "
        f"this run has 32; discriminator_width: checkpoint has 8, this run has 16); use the same settings to "
        f"resume, --restart to start over in this workdir (the old run is kept under archive/), or a new --workdir")


def test_the_driver_refuses_another_model_shape_even_when_config_json_was_lost(bucket, tmp_path, capsys):
    workdir = f"{bucket}/run"
    saved = TrainConfig(workdir=workdir, **TINY)
    save(build_state(saved), saved, f"{workdir}/checkpoints/checkpoint-00000010", 10, tmp_path)
    assert not storage.exists(f"{workdir}/config.json")
    status = cli_main(["train", "--workdir", workdir, "--noise-dim", "64", "--generator-width", "8",
                       "--discriminator-width", "8", "--steps", "20"])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"animegan: error: the checkpoint at {workdir}/checkpoints/checkpoint-00000010 was "
                            f"trained with a different model shape (noise_dim: checkpoint has 16, this run has 64)")


def test_restart_moves_the_previous_run_aside_whole_and_keeps_the_inputs(bucket):
    workdir = f"{bucket}/run"
    files = {"config.json": "{}", "metrics.jsonl": "{}\n", "status.json": "{}", "data-index.json": "{}",
             "samples/step-00000010.png": "png", "checkpoints/checkpoint-00000010/state.json": "{}",
             "checkpoints/" + RAY_SNAPSHOT: "{}", "demo-faces-v1-4096.zip": "zip", "data/0.png": "png"}
    for name, text in files.items():
        storage.write_text(f"{workdir}/{name}", text)
    messages: list[str] = []
    config, _, _ = resolve(TrainConfig(workdir=workdir, data=f"{workdir}/data", steps=5, batch_size=1, **TINY),
                           restart=True, log=messages.append)
    archived = storage.list_dir(f"{workdir}/archive")
    assert len(archived) == 1
    archive = f"{workdir}/archive/{archived[0]}"
    assert messages[0] == (f"--restart: the previous run (checkpoints, config.json, data-index.json, metrics.jsonl, "
                           f"samples, status.json) is now in {archive}; starting over in {workdir}")
    for name, text in files.items():
        if name.startswith(("data/", "demo-")):
            assert storage.read_text(f"{workdir}/{name}") == text  # inputs stay where they are
        else:
            assert storage.read_text(f"{archive}/{name}") == text
    assert json.loads(storage.read_text(f"{archive}/{JOURNAL}"))["status"] == "done"
    # The new run starts clean: a fresh config and data index, no metrics, no checkpoints.
    assert sorted(storage.list_dir(workdir)) == ["archive", "config.json", "data", "data-index.json",
                                                         "demo-faces-v1-4096.zip"]
    assert json.loads(storage.read_text(f"{workdir}/config.json"))["steps"] == 5 == config.steps


def test_an_interrupted_restart_is_finished_before_anything_else_happens(bucket):
    workdir = f"{bucket}/run"
    archive = f"{workdir}/archive/20250101-000000"
    # The crash came after checkpoints/ had moved and before metrics.jsonl did.
    storage.write_text(f"{archive}/checkpoints/checkpoint-00000010/state.json", "{}")
    storage.write_text(f"{workdir}/metrics.jsonl", '{"step": 10}\n')
    storage.write_text(f"{archive}/{JOURNAL}", json.dumps({"status": "moving",
                                                           "entries": ["checkpoints", "metrics.jsonl"]}))
    messages: list[str] = []
    finish_interrupted(workdir, log=messages.append)
    assert messages == [f"Finishing an interrupted --restart: moving the rest of the previous run to {archive}"]
    assert storage.read_text(f"{archive}/metrics.jsonl") == '{"step": 10}\n'
    assert storage.list_dir(workdir) == ["archive"]
    assert json.loads(storage.read_text(f"{archive}/{JOURNAL}"))["status"] == "done"


def test_a_ray_record_naming_a_deleted_checkpoint_is_set_aside(tmp_path):
    import ray

    layout = RunLayout(str(tmp_path))
    (tmp_path / "checkpoints" / "checkpoint-00000010").mkdir(parents=True)
    record = {"ray_version": ray.__version__,
              "checkpoint_results": [{"checkpoint_dir_name": "checkpoint-00000010"},
                                     {"checkpoint_dir_name": "checkpoint-00000020"}],
              "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint-00000020"}}
    (tmp_path / "checkpoints" / RAY_SNAPSHOT).write_text(json.dumps(record))
    messages: list[str] = []
    resume_from = str(tmp_path / "checkpoints" / "checkpoint-00000010")
    assert set_aside_stale_ray_snapshot(layout, resume_from, log=messages.append)
    assert not (tmp_path / "checkpoints" / RAY_SNAPSHOT).exists()
    assert json.loads((tmp_path / "checkpoints" / (RAY_SNAPSHOT + ".stale-1")).read_text()) == record
    assert "it names checkpoint folders that no longer exist (checkpoint-00000020)" in messages[0]
    # A record naming a checkpoint newer than the resume point (it is broken) would make Ray
    # count the folder twice once it is written again.
    (tmp_path / "checkpoints" / "checkpoint-00000020").mkdir()
    (tmp_path / "checkpoints" / RAY_SNAPSHOT).write_text(json.dumps(record))
    assert set_aside_stale_ray_snapshot(layout, resume_from, log=messages.append)
    assert "it names checkpoints newer than the one training resumes from (checkpoint-00000020)" in messages[1]
    assert (tmp_path / "checkpoints" / (RAY_SNAPSHOT + ".stale-2")).exists()  # the first one is kept too
    # A record that matches what is there is left alone.
    (tmp_path / "checkpoints" / RAY_SNAPSHOT).write_text(json.dumps(record))
    assert not set_aside_stale_ray_snapshot(layout, str(tmp_path / "checkpoints" / "checkpoint-00000020"),
                                            log=messages.append)
    assert len(messages) == 2


# ----------------------------------------------------------------------------- real runs on Ray


@pytest.mark.ray
def test_a_killed_worker_is_replaced_and_training_continues_from_the_checkpoint(ray_cluster, bucket, faces, capfd):
    from ray.util.state import list_actors

    workdir = f"{bucket}/run"
    config = TrainConfig(workdir=workdir, data=faces, steps=60, max_failures=2, **TWO_WORKERS)
    seen: dict = {}

    def kill_one_worker_after_the_first_checkpoint():
        try:
            wait_for(lambda: is_complete(f"{workdir}/checkpoints/checkpoint-00000010"), 300, "the first checkpoint")
            seen["metrics"] = storage.read_text(f"{workdir}/metrics.jsonl")
            workers = list_actors(address=ray_cluster, filters=[("class_name", "=", "RayTrainWorker"),
                                                                ("state", "=", "ALIVE")])
            seen["pid"] = workers[0].pid
            os.kill(seen["pid"], signal.SIGKILL)
        except BaseException as error:  # reported by the test thread below
            seen["error"] = error

    killer = threading.Thread(target=kill_one_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    outcome = run_training(config)
    killer.join(timeout=10)
    assert "error" not in seen, seen.get("error")
    assert not is_running(seen["pid"])

    assert outcome.status == "finished" and outcome.step == 60
    # Exactly one worker-group restart, from a checkpoint written before the kill, not from 0.
    [(name, resume_step)] = resumes(capfd.readouterr().out)
    assert 10 <= resume_step < 60 and name == f"checkpoint-{resume_step:08d}"
    # Every logged step once: nothing lost, nothing counted twice after the resume point.
    assert metric_steps(workdir) == list(range(5, 61, 5))
    # Rows up to the checkpoint were kept as written before the kill, not recomputed.
    before = [row for row in seen["metrics"].splitlines() if json.loads(row)["step"] <= resume_step]
    after = storage.read_text(f"{workdir}/metrics.jsonl").splitlines()
    assert len(before) >= 2 and after[:len(before)] == before

    # --keep-checkpoints 3 held across the restart, and the final checkpoint loads. A checkpoint
    # uploaded just before a worker died, whose report never completed, is unknown to Ray's
    # pruning: it stays (and was the one resumed from).
    kept = [step for step, _ in list_checkpoints(f"{workdir}/checkpoints")]
    assert kept[:3] == [60, 50, 40] and kept[3:] in ([], [resume_step])
    url, local = fetch_latest(f"{workdir}/checkpoints")
    info = restore(local, build_state(config), config, source=url)
    assert (info.step, info.epoch, info.skip_items) == (60, 7, 16)  # 60 steps x 4 images = 7 epochs of 32, and 16
    # Everything else the run writes is in the bucket too.
    assert json.loads(storage.read_text(f"{workdir}/config.json"))["steps"] == 60
    assert len(json.loads(storage.read_text(f"{workdir}/data-index.json"))["items"]) == 64
    assert storage.read_bytes(f"{workdir}/samples/step-00000060.png").startswith(b"\x89PNG")
    assert json.loads(storage.read_text(f"{workdir}/generator.json"))["step"] == 60


@pytest.mark.ray
def test_a_killed_driver_is_resumed_by_running_the_same_command_again(gcs_emulator, bucket, faces, tmp_path):
    workdir = f"{bucket}/run"
    command = [sys.executable, "-m", "animegan", "train", "--workdir", workdir, "--data", faces, "--steps", "40"]
    for key, value in ONE_WORKER.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    # The job starts (and must stop) its own local Ray instance, apart from the test session's.
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment["PYTHONUNBUFFERED"] = "1"

    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_for(lambda: is_complete(f"{workdir}/checkpoints/checkpoint-00000010") or first.poll() is not None,
                 300, "the first checkpoint")
        assert first.poll() is None, f"the run ended before it could be killed:\n{first_log.read_text()}"
    finally:
        killed = kill_tree(first)  # the driver, its Ray instance and the Ray workers, all at once
    assert len(killed) > 5 and not any(is_running(pid) for pid in killed)
    steps_before = metric_steps(workdir)
    assert steps_before and steps_before[-1] < 40

    second = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        output, _ = second.communicate(timeout=400)
        # The command shuts down the Ray instance it started: nothing of its process group is left.
        wait_for(lambda: not group_alive(second.pid), 60, "the second run's Ray processes to exit")
    finally:
        if group_alive(second.pid):
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    [(name, resume_step)] = resumes(output)
    assert 10 <= resume_step < 40
    assert f"Resuming from {workdir}/checkpoints/{name} (step {resume_step})" in output  # said by the driver
    assert metric_steps(workdir) == list(range(5, 41, 5))
    kept = [step for step, _ in list_checkpoints(f"{workdir}/checkpoints")]
    assert kept[:3] == [40, 30, 20] and kept[3:] in ([], [resume_step])  # see the worker test
    assert json.loads(storage.read_text(f"{workdir}/generator.json"))["step"] == 40


@pytest.mark.ray
def test_a_broken_checkpoint_is_passed_over_for_the_good_one_before_it_and_restart_starts_over(
        ray_cluster, bucket, faces, capfd):
    workdir = f"{bucket}/run"
    config = TrainConfig(workdir=workdir, data=faces, steps=30, **ONE_WORKER)
    assert run_training(config).step == 30
    checkpoints = f"{workdir}/checkpoints"
    fs, path = storage.filesystem(checkpoints)
    fs.rm(f"{path}/checkpoint-00000030", recursive=True)  # deleted by hand: Ray's record now names a ghost
    weights = storage.read_bytes(f"{checkpoints}/checkpoint-00000020/generator.weights.h5")
    storage.write_bytes(f"{checkpoints}/checkpoint-00000020/generator.weights.h5", weights[:len(weights) // 2])
    capfd.readouterr()

    messages: list[str] = []
    outcome = run_training(config.replace(steps=40), log=messages.append)
    assert outcome.status == "finished" and outcome.step == 40
    skipped = (f"skipping checkpoint {checkpoints}/checkpoint-00000020: generator.weights.h5 is truncated "
               f"({len(weights) // 2} of {len(weights)} bytes)")
    assert messages[:2] == [skipped, f"Resuming from {checkpoints}/checkpoint-00000010 (step 10)"]  # the driver
    assert any(message.startswith(f"Ray's checkpoint record {checkpoints}/{RAY_SNAPSHOT} was moved to")
               for message in messages)
    output = capfd.readouterr().out
    assert skipped in output and resumes(output) == [("checkpoint-00000010", 10)]  # the worker
    assert metric_steps(workdir) == list(range(5, 41, 5))
    assert [step for step, _ in list_checkpoints(checkpoints)] == [40, 30, 20, 10]

    # --restart: a new run from step 0 in the same workdir; the old one is kept whole in the archive.
    outcome = run_training(config.replace(steps=10), restart=True)
    assert outcome.status == "finished" and outcome.step == 10
    assert resumes(capfd.readouterr().out) == []
    assert metric_steps(workdir) == [5, 10]
    [archived] = storage.list_dir(f"{workdir}/archive")
    assert metric_steps(f"{workdir}/archive/{archived}") == list(range(5, 41, 5))
    assert [step for step, _ in list_checkpoints(f"{workdir}/archive/{archived}/checkpoints")] == [40, 30, 20, 10]
    assert load_generator(f"{workdir}/archive/{archived}").step == 40  # an archived run is still a workdir


@pytest.mark.ray
def test_the_driver_and_the_workers_pass_over_a_checkpoint_with_the_wrong_bytes_alike(
        ray_cluster, bucket, faces, capfd):
    # The driver used to check sizes only: it announced checkpoint 20, whose bytes were changed at
    # the same size, while rank 0 (checking SHA-256) resumed from checkpoint 10.
    workdir = f"{bucket}/run"
    config = TrainConfig(workdir=workdir, data=faces, steps=20, **ONE_WORKER)
    assert run_training(config).step == 20
    checkpoints = f"{workdir}/checkpoints"
    weights = bytearray(storage.read_bytes(f"{checkpoints}/checkpoint-00000020/generator.weights.h5"))
    weights[len(weights) // 2] ^= 0xFF
    storage.write_bytes(f"{checkpoints}/checkpoint-00000020/generator.weights.h5", bytes(weights))
    capfd.readouterr()

    messages: list[str] = []
    outcome = run_training(config.replace(steps=30), log=messages.append)
    assert outcome.status == "finished" and outcome.step == 30
    skipped = (f"skipping checkpoint {checkpoints}/checkpoint-00000020: generator.weights.h5 does not match its "
               f"checksum in state.json")
    assert messages[:2] == [skipped, f"Resuming from {checkpoints}/checkpoint-00000010 (step 10)"]  # the driver
    output = capfd.readouterr().out
    assert resumes(output) == [("checkpoint-00000010", 10)]  # the worker: the same one
    assert metric_steps(workdir) == list(range(5, 31, 5))


@pytest.mark.ray
def test_a_storage_outage_longer_than_gcsfs_retries_costs_rank_0_no_restart(ray_cluster, gcs_emulator, bucket,
                                                                            faces, capfd):
    workdir = f"{bucket}/run"
    config = TrainConfig(workdir=workdir, data=faces, steps=40, **{**ONE_WORKER, "sample_every": 10})
    snapshot = f"{workdir}/checkpoints/{RAY_SNAPSHOT}"
    seen: dict = {}

    def take_storage_away_for_a_while():
        try:
            # Once Ray has recorded checkpoint 10 (its controller's writes are Ray's, not rank 0's),
            # stop the storage for longer than gcsfs retries a request (about 31 s): rank 0's next
            # writes (the sample grid at step 20, metrics, checkpoint 20) meet the outage.
            wait_for(lambda: storage.exists(snapshot) and "checkpoint-00000010" in storage.read_text(snapshot),
                     300, "Ray's record of checkpoint 10")
            gcs_emulator.stop()
            seen["down"] = time.monotonic()
            time.sleep(45)
            gcs_emulator.start()
            seen["up"] = time.monotonic()
        except BaseException as error:
            seen["error"] = error

    thread = threading.Thread(target=take_storage_away_for_a_while, daemon=True)
    thread.start()
    try:
        outcome = run_training(config)
    finally:
        thread.join(timeout=120)
        if gcs_emulator.process is None:
            gcs_emulator.start()
    assert "error" not in seen, seen.get("error")
    assert seen["up"] - seen["down"] >= 45
    assert outcome.status == "finished" and outcome.step == 40
    output = capfd.readouterr()
    assert resumes(output.out) == []  # no worker group restart: the writes waited for the storage
    assert re.search(r"(writing|uploading|checking) gs://\S+ failed \(", output.out + output.err)  # our retries
    assert metric_steps(workdir) == list(range(5, 41, 5))
    assert [step for step, _ in list_checkpoints(f"{workdir}/checkpoints")] == [40, 30, 20]
    assert all(is_complete(url) for _, url in list_checkpoints(f"{workdir}/checkpoints"))


@pytest.mark.ray
def test_storage_crashing_during_a_checkpoint_upload_is_retried_and_keeps_every_checkpoint_whole(
        ray_cluster, gcs_emulator, bucket, faces, capfd):
    workdir = f"{bucket}/run"
    upload = "run/checkpoints/checkpoint-00000020/"
    config = TrainConfig(workdir=workdir, data=faces, steps=30, **ONE_WORKER)
    # The emulator dies when the third file of checkpoint 20 arrives, two files into the upload.
    gcs_emulator.stop()
    faulty = FaultyEmulator(gcs_emulator.port, gcs_emulator.data_dir, pattern=upload, count=3)
    faulty.start()
    seen: dict = {}

    def restart_the_emulator_after_it_crashes():
        try:
            wait_for(lambda: faulty.process.poll() is not None, 300, "the emulator to crash", interval=0.05)
            seen["exit"] = faulty.process.returncode
            seen["stored"] = faulty.stored_objects(bucket, upload)
            seen["previous"] = faulty.stored_objects(bucket, "run/checkpoints/checkpoint-00000010/")
            time.sleep(3)  # down for a few seconds: requests in the meantime are refused
            gcs_emulator.start()
        except BaseException as error:
            seen["error"] = error

    restarter = threading.Thread(target=restart_the_emulator_after_it_crashes, daemon=True)
    restarter.start()
    try:
        outcome = run_training(config)
    finally:
        restarter.join(timeout=60)
        faulty.stop()
        if gcs_emulator.process is None:
            gcs_emulator.start()
    assert "error" not in seen, seen.get("error")
    assert seen["exit"] == CRASH_EXIT_CODE
    assert len(seen["stored"]) == 2  # it died mid-upload: two of the checkpoint's six files were stored
    assert len(seen["previous"]) == 6  # and the checkpoint before was whole

    # Requests refused while the emulator was down were retried (by gcsfs, then by rank 0's own
    # uploader, retried as reads are) once it was back; a file still missing after the upload
    # would have been found by the check that follows it and uploaded again. No worker restarted.
    assert outcome.status == "finished" and outcome.step == 30
    output = capfd.readouterr().out
    assert resumes(output) == []
    assert metric_steps(workdir) == list(range(5, 31, 5))
    for step in (10, 20, 30):
        local = download(f"{workdir}/checkpoints/checkpoint-{step:08d}")  # every byte checked
        assert sorted(os.listdir(local)) == ["discriminator.weights.h5", "ema_generator.weights.h5",
                                             "fixed_noise.npy", "generator.weights.h5", "optimizers.npz",
                                             "state.json"]
