"""Real training runs through TensorflowTrainer on a local Ray instance, with 1 and 2 CPU workers:
finite losses that move the right way, the workdir's files, resume with the step count continuing,
and divergence stopping cleanly."""

from __future__ import annotations

import json
import math
import shutil
import time

import keras
import numpy as np
import pytest
from PIL import Image

from animegan.checkpoint import list_checkpoints, read_state
from animegan.config import TrainConfig
from animegan.launcher import run_training
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.ray


def assert_first_step_loss_is_unscaled(d_loss: float) -> None:
    """An undecided discriminator's loss is about 2 ln 2 = 1.39 (higher with a small batch's spread of logits).

    Losses summed over replicas but not divided by the global batch would double it (~2.8);
    divided twice, it would halve (~0.7).
    """
    assert 1.1 < d_loss < 2.0


def rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_one_worker_run_writes_every_artifact(tiny_run):
    workdir = tiny_run.layout.workdir
    from pathlib import Path

    workdir = Path(workdir)
    assert tiny_run.status == "finished" and tiny_run.step == 60
    metrics = rows(workdir)
    assert [row["step"] for row in metrics] == list(range(1, 61))
    for row in metrics:
        assert all(math.isfinite(row[key]) for key in ["loss/d", "loss/g", "d/real", "d/fake"])
        assert row["perf/images_per_sec"] > 0 and row["data/skipped"] == 0
    assert_first_step_loss_is_unscaled(metrics[0]["loss/d"])
    first, last = metrics[0], metrics[-1]
    assert np.mean([row["loss/d"] for row in metrics[-5:]]) < first["loss/d"]  # D's loss falls
    assert last["d/real"] - last["d/fake"] > first["d/real"] - first["d/fake"]  # D tells them apart

    config = json.loads((workdir / "config.json").read_text())
    assert config["steps"] == 60 and config["workdir"] == str(workdir) and config["data"] is None

    for step in (30, 60):
        grid = Image.open(workdir / "samples" / f"step-{step:08d}.png")
        assert grid.size == (8 * 66 + 2, 8 * 66 + 2)  # 8x8 images of 64 pixels with 2-pixel gaps

    checkpoints = list_checkpoints(str(workdir / "checkpoints"))
    assert [step for step, _ in checkpoints] == [60, 30]
    state = read_state(checkpoints[0][1])
    assert state["step"] == 60 and state["model"] == {
        "noise_dim": 16, "generator_width": 8, "discriminator_width": 8, "architecture": "dcgan",
        "spectral_norm": False, "discriminator_batch_norm": True, "minibatch_std": 0}
    assert {"generator.weights.h5", "discriminator.weights.h5", "ema_generator.weights.h5", "optimizers.npz",
            "fixed_noise.npy"} <= set(state["files"])

    generator = keras.saving.load_model(workdir / "generator.keras", safe_mode=True)
    assert generator(np.zeros((2, 16), np.float32)).shape == (2, 64, 64, 3)
    assert json.loads((workdir / "generator.json").read_text())["step"] == 60


def test_rerunning_the_same_command_resumes_and_continues_the_step_count(tiny_run, tmp_path, capfd):
    workdir = tmp_path / "resumed"
    shutil.copytree(tiny_run.layout.workdir, workdir)
    config = json.loads((workdir / "config.json").read_text())
    config.update(workdir=str(workdir), steps=70)
    outcome = run_training(TrainConfig.from_dict(config))
    assert outcome.status == "finished" and outcome.step == 70
    steps = [row["step"] for row in rows(workdir)]
    assert steps == list(range(1, 71))  # continued from 60: no restart from 0, no step twice
    assert "Resuming from" in capfd.readouterr().out
    assert [step for step, _ in list_checkpoints(str(workdir / "checkpoints"))] == [70, 60, 30]
    assert read_state(str(workdir / "checkpoints" / "checkpoint-00000070"))["epoch"] == 0


def test_a_run_that_is_already_finished_does_no_more_steps(tiny_run, tmp_path):
    workdir = tmp_path / "done"
    shutil.copytree(tiny_run.layout.workdir, workdir)
    config = json.loads((workdir / "config.json").read_text())
    config.update(workdir=str(workdir))
    messages: list[str] = []
    started = time.monotonic()
    outcome = run_training(TrainConfig.from_dict(config), log=messages.append)
    assert (outcome.status, outcome.step) == ("finished", 60)
    assert outcome.metrics == json.loads((workdir / "status.json").read_text())["metrics"]
    assert messages[-1].startswith("Nothing to train: this workdir's run finished at step 60")
    assert time.monotonic() - started < 10  # said by the driver: no workers started
    assert [row["step"] for row in rows(workdir)][-1] == 60
    assert [step for step, _ in list_checkpoints(str(workdir / "checkpoints"))] == [60, 30]


def test_two_workers_train_in_lock_step_with_the_same_loss_scale(ray_cluster, tmp_path):
    config = TrainConfig(workdir=str(tmp_path), steps=8, batch_size=8, workers=2, cpus_per_worker=1,
                         log_every=1, sample_every=8, checkpoint_every=4, **TINY_MODEL)
    outcome = run_training(config)
    assert outcome.status == "finished" and outcome.step == 8
    metrics = rows(tmp_path)
    assert [row["step"] for row in metrics] == list(range(1, 9))  # only rank 0 writes: one row per step
    # Per-replica sums over the global batch of 8 (4 per worker): the same scale as one worker.
    assert_first_step_loss_is_unscaled(metrics[0]["loss/d"])
    assert all(math.isfinite(row["loss/g"]) for row in metrics)
    assert (tmp_path / "samples" / "step-00000008.png").exists()
    assert [step for step, _ in list_checkpoints(str(tmp_path / "checkpoints"))] == [8, 4]


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tiny_run, tmp_path, capfd):
    # Resume a good run with a learning rate that overflows float32 on the next step.
    workdir = tmp_path / "diverging"
    shutil.copytree(tiny_run.layout.workdir, workdir)
    config = json.loads((workdir / "config.json").read_text())
    config.update(workdir=str(workdir), steps=80, lr=1e38, checkpoint_every=1)
    outcome = run_training(TrainConfig.from_dict(config))
    assert outcome.status == "diverged" and outcome.step == 61
    assert "training stopped at step 61: a loss became NaN or infinite" in capfd.readouterr().err
    metrics = rows(workdir)
    assert [row["step"] for row in metrics] == list(range(1, 61))  # the NaN row is never written
    assert all(math.isfinite(row["loss/d"]) and math.isfinite(row["loss/g"]) for row in metrics)
    assert list_checkpoints(str(workdir / "checkpoints"))[0][0] == 60  # the last good one stays the latest


def test_training_on_the_real_faces(ray_cluster, real_faces, tmp_path):
    config = TrainConfig(data=str(real_faces), workdir=str(tmp_path), steps=10, batch_size=16, log_every=5,
                         sample_every=10, checkpoint_every=10, cpus_per_worker=1, **TINY_MODEL)
    outcome = run_training(config)
    assert outcome.status == "finished"
    metrics = rows(tmp_path)
    assert [row["step"] for row in metrics] == [5, 10]
    assert all(row["data/skipped"] == 0 for row in metrics)
    index = json.loads((tmp_path / "data-index.json").read_text())
    assert index["source"] == str(real_faces) and len(index["items"]) == 10_000
