"""The command line: every bad input ends at once with one line on stderr and exit status 2, never a
traceback; --dry-run resolves without writing anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.images import write_folder


def animegan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animegan", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def assert_usage_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("animegan: error:")]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--lr", "-0.001"], "--lr must be positive"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--noise-dim", "-4"], "--noise-dim must be a positive integer, got -4"),
    (["--batch-size", "10", "--workers", "4"], "--batch-size 10 cannot be split evenly over 4 replicas"),
    (["--steps", "5", "--epochs", "2"], "give --steps or --epochs, not both"),
    (["--data", "nosuchscheme://bucket/faces"], "unknown URL scheme 'nosuchscheme://'"),
    (["--data", "/definitely/not/here"], "no such file, folder, bucket or prefix: /definitely/not/here"),
    (["--config", "/definitely/not/here.yaml"], "config file not found"),
])
def test_bad_training_input(args, message, tmp_path):
    result = animegan("train", "--workdir", str(tmp_path / "run"), *args)
    assert_usage_error(result, message)
    assert not (tmp_path / "run").exists()  # nothing written, no Ray started


def test_an_empty_folder_and_too_few_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(animegan("train", "--data", str(empty), "--dry-run"), "no images (")
    few = tmp_path / "few"
    write_folder(few, 3)
    assert_usage_error(animegan("train", "--data", str(few), "--dry-run"),
                       "3 images at")


def test_unknown_field_in_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.001\n")
    assert_usage_error(animegan("train", "--config", str(config), "--dry-run"),
                       "unknown config field(s): 'learning_rate'")


def test_a_missing_bucket_fails_within_seconds(gcs_emulator):
    started = time.monotonic()
    result = animegan("train", "--data", "gs://no-such-bucket-anywhere/faces", "--dry-run")
    assert_usage_error(result, "no such file, folder, bucket or prefix: gs://no-such-bucket-anywhere/faces")
    assert time.monotonic() - started < 15


def test_dry_run_resolves_epochs_to_steps_and_writes_nothing(tmp_path):
    write_folder(tmp_path / "faces", 40)
    workdir = tmp_path / "run"
    result = animegan("train", "--data", str(tmp_path / "faces"), "--workdir", str(workdir), "--epochs", "2",
                      "--batch-size", "8", "--dry-run")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["steps"] == 10  # 40 images / 8 per step = 5 steps per epoch, 2 epochs
    assert resolved["batch_size"] == 8 and resolved["workdir"] == str(workdir)
    assert not workdir.exists()


def test_workers_share_local_cores_but_take_one_cpu_each_on_a_cluster(tmp_path):
    write_folder(tmp_path / "faces", 16)
    common = ("train", "--data", str(tmp_path / "faces"), "--workdir", str(tmp_path / "run"), "--batch-size", "8",
              "--dry-run")
    local = json.loads(animegan(*common).stdout)
    assert local["cpus_per_worker"] == os.cpu_count() > 1  # one worker: all of this machine's cores
    # Nothing connects in a dry run; the address alone says the workers run on other nodes.
    joined = json.loads(animegan(*common, "--address", "ray://head.example:10001").stdout)
    assert joined["cpus_per_worker"] == 1.0
    explicit = json.loads(animegan(*common, "--address", "ray://head.example:10001", "--cpus-per-worker", "4").stdout)
    assert explicit["cpus_per_worker"] == 4.0


def test_resuming_a_workdir_with_another_model_shape_names_the_fields(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.layout.workdir, workdir)
    result = animegan("train", "--workdir", str(workdir), "--noise-dim", "32", "--generator-width", "8",
                      "--discriminator-width", "8")
    assert_usage_error(result, "trained with a different model shape (noise_dim: checkpoint has 16, this run has 32)")


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/definitely/not/here", "--out", "OUT"], "no such workdir"),
    (["--checkpoint", "EMPTY", "--out", "OUT"], "holds neither generator.keras nor a valid checkpoint"),
    (["--checkpoint", "EMPTY", "--out", "OUT", "--num", "0"], "--num must be a positive integer, got 0"),
])
def test_bad_generate_input(args, message, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [arg.replace("EMPTY", str(tmp_path / "empty")).replace("OUT", str(tmp_path / "out")) for arg in args]
    assert_usage_error(animegan("generate", *args), message)


def test_bad_preview_input(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_usage_error(animegan("data", "preview", "--data", str(tmp_path / "empty"), "--out",
                                str(tmp_path / "grid.png")), "no images (")


def test_help_lists_the_commands():
    result = animegan("--help")
    assert result.returncode == 0
    for command in ["train", "generate", "data"]:
        assert command in result.stdout


def test_secrets_never_go_into_the_ray_runtime_env(monkeypatch):
    from animegan.cluster import worker_env

    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_PROJECT", "faces")
    monkeypatch.setenv("GCSFS_TOKEN", "secret-token")
    env = worker_env()
    assert env["WANDB_PROJECT"] == "faces"
    assert "WANDB_API_KEY" not in env and "GCSFS_TOKEN" not in env
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
