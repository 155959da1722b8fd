"""W&B tracking: settings, the writer, and real training runs read back from their `.wandb` files.

W&B runs offline here (conftest sets WANDB_MODE=offline); nothing is ever sent.
A fake API key is put into the Ray workers' environment (RunConfig's
worker_runtime_env) where a test needs W&B to believe it could log in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from animegan import tracking
from animegan.config import TrainConfig
from animegan.workdir import RunLayout
from tests.support.ports import free_port
from tests.support.wandb_records import read_run, run_files

FAKE_KEY = "fakeapikey0123456789abcdef0123456789abcdef"  # 40 characters, like a real key
LOSS_KEYS = ["loss/d", "loss/g", "d/real", "d/fake", "lr/generator", "lr/discriminator",
             "perf/images_per_sec", "perf/step_time"]
TINY = dict(batch_size=8, noise_dim=16, generator_width=8, discriminator_width=8, cpus_per_worker=1)


def train(config: TrainConfig, worker_env: dict[str, str] | None = None) -> tuple[dict, RunLayout]:
    """A real training run like run_training's, with extra environment for the Ray workers."""
    from animegan.launcher import build_trainer, resolve

    config, _, _ = resolve(config, log=lambda *_: None)
    layout = RunLayout(config.workdir)
    extras = {"worker_runtime_env": {"env_vars": worker_env}} if worker_env else None
    result = build_trainer(config, layout, extras).fit()
    return dict(result.metrics or {}), layout


def files_containing(folder: Path, secret: str) -> list[Path]:
    return [path for path in folder.rglob("*")
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()]


# --------------------------------------------------------------- settings


def test_flags_win_over_the_drivers_environment_which_wins_over_the_workers(tmp_path):
    layout = RunLayout(str(tmp_path))
    forwarded = {"WANDB_PROJECT": "driver-project", "WANDB_ENTITY": "driver-team", "WANDB_TAGS": "a, b"}
    environ = {"WANDB_API_KEY": FAKE_KEY, "WANDB_PROJECT": "worker-project", "WANDB_ENTITY": "worker-team",
               "WANDB_RUN_GROUP": "worker-group", "WANDB_BASE_URL": "http://wandb.local:8080"}
    config = TrainConfig(wandb_project="flag-project", wandb_group="sweep-7", wandb_mode="offline")

    options = tracking.resolve_options(config, layout, "abc", forwarded, environ)

    assert (options.project, options.entity, options.group) == ("flag-project", "driver-team", "sweep-7")
    assert options.tags == ("a", "b")
    assert options.mode == "offline" and options.offline_reason is None
    assert options.base_url == "http://wandb.local:8080"
    # A local workdir holds W&B's folder too; the run is named after the workdir.
    assert options.directory == str(tmp_path) and options.name == tmp_path.name
    assert options.console == "off" and options.run_id == "abc"

    defaults = tracking.resolve_options(TrainConfig(), RunLayout("gs://bucket/runs/trial-3"), "abc", {},
                                        {"WANDB_API_KEY": FAKE_KEY})
    assert (defaults.project, defaults.entity, defaults.group, defaults.tags) == ("animegan", None, None, ())
    assert defaults.mode == "online" and defaults.name == "trial-3"
    assert not defaults.directory.startswith("gs://")  # W&B writes locally; offline runs are copied up at the end


def test_without_an_api_key_the_run_is_offline_and_says_why(tmp_path):
    layout = RunLayout(str(tmp_path))
    no_netrc = {"NETRC": str(tmp_path / "missing-netrc")}
    options = tracking.resolve_options(TrainConfig(), layout, "abc", {}, no_netrc)
    assert options.mode == "offline"
    assert "WANDB_API_KEY" in options.offline_reason and "wandb login" in options.offline_reason
    # Asking for online without a key cannot log in either: offline, for the same reason.
    assert tracking.resolve_options(TrainConfig(wandb_mode="online"), layout, "abc", {}, no_netrc).mode == "offline"

    # `wandb login` writes the key to .netrc for the server's host.
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine wandb.local\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    with_login = {"NETRC": str(netrc_file), "WANDB_BASE_URL": "http://wandb.local:8080"}
    assert tracking.resolve_options(TrainConfig(), layout, "abc", {}, with_login).mode == "online"
    assert tracking.resolve_options(TrainConfig(), layout, "abc", {}, {"NETRC": str(netrc_file)}).mode == "offline"


def test_bad_wandb_settings_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"--wandb-mode must be one of online, offline, disabled, got 'sometimes'"):
        TrainConfig(wandb_mode="sometimes").validate()
    with pytest.raises(ValueError, match=r"--wandb-tags: W&B tags are at most 64 characters"):
        TrainConfig(wandb_tags="ok," + "x" * 65).validate()
    with pytest.raises(ValueError, match=r"--wandb-checkpoint-every must be 0 \(off\) or a positive number of "
                                         r"checkpoints, got -1"):
        TrainConfig(wandb_checkpoint_every=-1).validate()
    with pytest.raises(ValueError, match=r"WANDB_MODE must be one of online, offline, disabled, got 'loud'"):
        tracking.driver_environment({"WANDB_MODE": "loud"})
    with pytest.raises(ValueError, match=r"WANDB_INIT_TIMEOUT must be a positive number of seconds, got 'soon'"):
        tracking.driver_environment({"WANDB_INIT_TIMEOUT": "soon"})


def test_the_driver_forwards_wandb_settings_but_never_the_api_key():
    environ = {"WANDB_API_KEY": FAKE_KEY, "WANDB_PROJECT": "p", "WANDB_MODE": "dryrun", "HOME": "/root"}
    assert tracking.driver_environment(environ) == {"WANDB_PROJECT": "p", "WANDB_MODE": "dryrun"}


def test_the_run_id_is_made_once_per_workdir(tmp_path):
    first = tracking.run_identity(RunLayout(str(tmp_path / "a")))
    assert tracking.run_identity(RunLayout(str(tmp_path / "a"))) == first
    assert tracking.run_identity(RunLayout(str(tmp_path / "b"))) != first
    assert json.loads((tmp_path / "a" / "wandb-run.json").read_text()) == {"id": first}


def test_disabled_mode_starts_no_run_and_writes_nothing(tmp_path):
    writer = tracking.start_run(TrainConfig(workdir=str(tmp_path), wandb_mode="disabled"), RunLayout(str(tmp_path)),
                                {"WANDB_MODE": "offline"})
    assert writer is None
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- the writer, in this process


def writer_for(tmp_path, monkeypatch, workdir: str | None = None, **changes) -> tracking.WandbWriter:
    # W&B's own caches and staging (artifacts) go to the test's folder, not the home directory.
    for variable in ["WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"]:
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable.lower()))
    workdir = workdir or str(tmp_path)
    config = TrainConfig(workdir=workdir, wandb_group="sweep", wandb_tags="test", **changes)
    layout = RunLayout(workdir)
    options = tracking.resolve_options(config, layout, tracking.run_identity(layout), {}, os.environ)
    return tracking.WandbWriter(options, config.to_dict(), log=lambda message: None)


def test_writer_logs_rows_images_summaries_of_the_best_values_and_the_model(tmp_path, monkeypatch):
    (tmp_path / "generator.keras").write_bytes(b"not really a model, but bytes to upload")
    (tmp_path / "generator.json").write_text(json.dumps({"step": 30, "config": TrainConfig().to_dict()}))
    writer = writer_for(tmp_path, monkeypatch, wandb_log_model=True)
    for step, fid in [(10, 90.0), (20, 70.0), (30, 80.0)]:
        writer.write(step, {"loss/d": 1.0 / step, "loss/g": step / 10, "perf/images_per_sec": step * 1.0})
        writer.write(step, {"eval/fid": fid, "eval/kid": fid / 1000})
    writer.log_image(30, "samples/ema", np.zeros((20, 20, 3), np.uint8), "step 30")
    writer.log_summary({"status": "finished", "step": 30})
    writer.close()

    [run_file] = run_files(tmp_path)
    run = read_run(run_file)
    assert run.group == "sweep" and run.tags == ["test"] and run.exit_code == 0
    assert [row["step"] for row in run.rows_with("loss/g")] == [10, 20, 30]
    assert [row["eval/fid"] for row in run.rows_with("eval/fid")] == [90.0, 70.0, 80.0]
    [image] = run.rows_with("samples/ema")
    assert image["step"] == 30 and image["samples/ema"]["caption"] == "step 30"
    assert image["samples/ema"]["_type"] == "image-file"
    # W&B keeps the best and the last value of each (define_metric), against the training step.
    for key, kind in [("eval/fid", "min"), ("eval/kid", "min"), ("loss/d", "min"), ("loss/g", "min"),
                      ("perf/images_per_sec", "mean")]:
        assert run.metrics[key] == {"step_metric": "step", "summary": {kind, "last"}}, key
    assert run.metrics["eval/inception_score"]["summary"] == {"max", "last"}
    assert run.metrics["*"]["step_metric"] == "step"
    summary = run.summary
    assert summary["eval/fid"] == {"min": 70.0, "last": 80.0}
    assert summary["eval/kid"] == {"min": pytest.approx(0.07), "last": pytest.approx(0.08)}
    assert summary["loss/g"] == {"min": 1.0, "last": 3.0}
    assert summary["perf/images_per_sec"] == {"mean": pytest.approx(20.0), "last": 30.0}
    assert not [key for key in summary if key.startswith("best")]
    assert summary["status"] == "finished" and summary["step"] == 30
    [artifact] = run.artifacts
    assert artifact["type"] == "model" and artifact["files"] == ["generator.keras"]
    assert set(artifact["aliases"]) >= {"latest", "step-30"}


def test_a_resumed_session_logs_only_steps_past_the_run_and_its_summary_covers_every_session(tmp_path, monkeypatch):
    # Session 1 logged steps 10 and 20 and stopped; its newest checkpoint was at 10, so session 2
    # repeats step 20 before going on. W&B cannot overwrite step 20: session 2 must leave it out.
    first = writer_for(tmp_path, monkeypatch)
    for step, fid in [(10, 90.0), (20, 70.0)]:
        first.write(step, {"loss/g": step / 10, "perf/images_per_sec": 10.0})
        first.write(step, {"eval/fid": fid})
    first.log_image(20, "samples/ema", np.zeros((8, 8, 3), np.uint8), "step 20")
    first.close()
    record = json.loads((tmp_path / "wandb-logged.json").read_text())
    assert record["last_step"] == 20 and record["metrics"]["eval/fid"]["min"] == 70.0

    messages: list[str] = []
    second = writer_for(tmp_path, monkeypatch)
    second.log = messages.append
    for step, fid in [(20, 75.0), (30, 80.0)]:
        second.write(step, {"loss/g": step / 100, "perf/images_per_sec": 40.0})
        second.write(step, {"eval/fid": fid})
        second.log_image(step, "samples/ema", np.zeros((8, 8, 3), np.uint8), f"step {step}")
    second.log_summary({"status": "finished", "step": 30})
    second.close()

    earlier, later = [read_run(path) for path in run_files(tmp_path)]
    assert earlier.run_id == later.run_id
    assert [row["step"] for row in later.rows_with("loss/g")] == [30]
    assert [row["step"] for row in later.rows_with("eval/fid")] == [30]
    assert [row["step"] for row in later.rows_with("samples/ema")] == [30]
    # Every step once over both sessions.
    steps = [row["step"] for run in (earlier, later) for row in run.rows_with("loss/g")]
    assert steps == sorted(set(steps)) == [10, 20, 30]
    # The summary is the whole run's: FID 70 was session 1's, the last values session 2's.
    assert later.summary["eval/fid"] == {"min": 70.0, "last": 80.0}
    assert later.summary["loss/g"] == {"min": 0.3, "last": 0.3}
    assert later.summary["perf/images_per_sec"] == {"mean": pytest.approx(20.0), "last": 40.0}
    assert json.loads((tmp_path / "wandb-logged.json").read_text())["last_step"] == 30
    assert any("holds steps up to 20" in message for message in messages), messages
    assert any("3 row(s) and image(s) of steps up to 20" in message for message in messages), messages


def test_a_record_of_logged_steps_that_is_not_valid_is_ignored_with_a_warning(tmp_path):
    from animegan.wandb_record import LoggedRecord

    layout = RunLayout(str(tmp_path))
    messages: list[str] = []
    for document in ['{"run_id": "abc", "last_step": "twenty", "metrics": {}}',
                     '{"run_id": "abc", "last_step": 5, "metrics": {"eval/fid": {"min": "NaN"}}}',
                     '{"run_id": "abc", "last_step": 5, "metrics": {"../other": {}}}', "not json"]:
        (tmp_path / "wandb-logged.json").write_text(document)
        record = LoggedRecord.load(layout, "abc", log=messages.append)
        assert record.last_step is None and record.metrics == {}
    assert len(messages) == 4 and all("may be logged twice" in message for message in messages)
    # Another run's record (the workdir was started over) is not this run's history.
    (tmp_path / "wandb-logged.json").write_text('{"run_id": "xyz", "last_step": 50, "metrics": {}}')
    assert LoggedRecord.load(layout, "abc", log=messages.append).last_step is None and len(messages) == 4


def test_an_artifact_that_cannot_be_made_is_a_warning_and_logging_goes_on(tmp_path, monkeypatch):
    # A checkpoint that --keep-checkpoints pruned before W&B's thread came to it.
    writer = writer_for(tmp_path, monkeypatch, checkpoint_every=10, wandb_checkpoint_every=1)
    messages: list[str] = []
    writer.log = messages.append
    writer.write(10, {"loss/g": 1.0})
    writer.log_checkpoint(10, str(tmp_path / "checkpoints" / "checkpoint-00000010"))
    writer.write(20, {"loss/g": 2.0})
    writer.log_summary({"status": "finished", "step": 20})
    writer.close()
    run = read_run(run_files(tmp_path)[0])
    assert [row["step"] for row in run.rows_with("loss/g")] == [10, 20]
    assert run.artifacts == [] and run.exit_code == 0 and run.summary["status"] == "finished"
    assert any(message.startswith("W&B: could not log a checkpoint (FileNotFoundError") for message in messages), \
        messages


def test_every_kth_checkpoint_and_the_last_become_artifacts():
    from animegan.wandb_artifacts import checkpoint_wanted

    steps = [10, 20, 30, 40, 50, 60, 65]
    wanted = [step for step in steps if checkpoint_wanted(step, 10, 3, final=step == 65)]
    assert wanted == [30, 60, 65]
    assert not any(checkpoint_wanted(step, 10, 0, final=True) for step in steps)  # off by default
    assert [step for step in steps if checkpoint_wanted(step, 10, 1, final=False)] == steps[:-1]


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_data_pack_is_a_reference_artifact_that_the_run_uses(where, tmp_path, monkeypatch, request):
    from animegan.data.packing import PackProgress, pack
    from animegan.data.shards import PackedSource
    from tests.support.bucket_data import image_bytes, write_local

    write_local(tmp_path / "raw", image_bytes(24))
    destination = (str(tmp_path / "faces-packed") if where == "local"
                   else f"{request.getfixturevalue('bucket')}/packs/faces-packed")
    pack(str(tmp_path / "raw"), destination, shard_bytes=16 << 10, log=lambda message: None,
         progress=PackProgress(0, stream=io.StringIO()))
    source = PackedSource(destination)
    writer = writer_for(tmp_path, monkeypatch, workdir=str(tmp_path / "run"))
    writer.use_pack(source)
    writer.close()

    [artifact] = read_run(run_files(tmp_path / "run")[0]).artifacts
    assert artifact["name"] == "pack-faces-packed" and artifact["type"] == "dataset"
    shards = [shard.name for shard in source.manifest.shards]
    assert len(shards) >= 2
    expected = ["manifest.json"] + shards + [f"{name}.json" for name in shards]
    assert sorted(artifact["files"]) == sorted(expected)
    # Referred to where the pack lives, not copied: every entry names its file's URL.
    base = f"file://{tmp_path}/faces-packed" if where == "local" else destination
    assert artifact["refs"] == {name: f"{base}/{name}" for name in expected}
    assert artifact["metadata"]["images"] == 24 and artifact["metadata"]["shards"] == len(shards)


def test_a_diverged_run_is_marked_failed_and_uploads_no_model(tmp_path, monkeypatch):
    (tmp_path / "generator.keras").write_bytes(b"an older generator")
    writer = writer_for(tmp_path, monkeypatch, wandb_log_model=True)
    writer.write(10, {"loss/d": 1.0, "loss/g": 1.0})
    writer.log_summary({"status": "diverged", "step": 15})
    writer.close()
    run = read_run(run_files(tmp_path)[0])
    assert run.exit_code == 1 and run.summary["status"] == "diverged" and run.artifacts == []


def test_an_offline_run_of_a_bucket_workdir_is_copied_into_the_workdir(bucket, tmp_path, monkeypatch):
    from animegan import storage

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "local"))  # W&B itself writes locally
    workdir = f"{bucket}/runs/trial-1"
    writer = writer_for(tmp_path, monkeypatch, workdir=workdir)
    writer.write(5, {"loss/d": 1.0, "loss/g": 2.0})
    writer.close()

    run_id = json.loads(storage.read_text(f"{workdir}/wandb-run.json"))["id"]
    [folder] = storage.list_dir(f"{workdir}/wandb")
    assert folder.startswith("offline-run-") and folder.endswith(run_id)
    copy = tmp_path / "copy.wandb"
    copy.write_bytes(storage.read_bytes(f"{workdir}/wandb/{folder}/run-{run_id}.wandb"))
    run = read_run(copy)
    assert run.run_id == run_id and run.name == "trial-1"
    assert [row["loss/g"] for row in run.rows_with("loss/g")] == [2.0]


class SilentServer:
    """A TCP server that accepts connections and never answers: the slowest W&B server there is."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                self.connections.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()


@contextlib.contextmanager
def online_writer_behind_a_silent_server(tmp_path, monkeypatch):
    """An online W&B writer whose server accepts connections and never answers; yields (writer, its messages)."""
    server = SilentServer()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    messages: list[str] = []
    try:
        writer = writer_for(tmp_path, monkeypatch, wandb_mode="online")
        writer.log = messages.append
        yield writer, messages
    finally:
        server.close()


def test_a_server_that_never_answers_neither_blocks_logging_nor_loses_rows(tmp_path, monkeypatch):
    with online_writer_behind_a_silent_server(tmp_path, monkeypatch) as (writer, messages):
        started = time.perf_counter()
        for step in range(1, 201):
            writer.write(step, {"loss/d": 1.0, "loss/g": float(step)})
        assert time.perf_counter() - started < 1.0  # the training thread only enqueues
        writer.log_summary({"status": "finished", "step": 200})
        closing = time.perf_counter()
        writer.close()
        assert time.perf_counter() - closing < tracking.FINISH_TIMEOUT_SECONDS

    assert any("logging offline instead" in message for message in messages), messages
    assert any("wandb sync" in message for message in messages), messages
    offline = [path for path in run_files(tmp_path) if path.parent.name.startswith("offline-run-")]
    run = read_run(offline[0])
    assert [row["step"] for row in run.rows_with("loss/g")] == list(range(1, 201))
    assert run.summary["status"] == "finished"
    assert files_containing(tmp_path, FAKE_KEY) == []


def test_when_wandb_falls_behind_rows_are_dropped_with_a_warning_not_queued_forever(tmp_path, monkeypatch):
    from animegan import wandb_writer

    monkeypatch.setattr(wandb_writer, "QUEUE_SIZE", 10)
    # The silent server holds W&B's start-up, so nothing leaves the queue meanwhile.
    with online_writer_behind_a_silent_server(tmp_path, monkeypatch) as (writer, messages):
        for step in range(1, 31):
            writer.write(step, {"loss/g": float(step)})
        writer.close()
    assert any("20 item(s) were dropped" in message for message in messages), messages
    offline = [path for path in run_files(tmp_path) if path.parent.name.startswith("offline-run-")]
    assert [row["step"] for row in read_run(offline[0]).rows_with("loss/g")] == list(range(1, 11))


# --------------------------------------------------------------- real training runs


@pytest.mark.ray
def test_a_two_worker_run_is_one_wandb_run_that_a_resume_continues_without_logging_a_step_twice(
        ray_cluster, tmp_path):
    from animegan.data.packing import PackProgress, pack
    from tests.support.images import write_folder

    write_folder(tmp_path / "faces", 64)
    pack(str(tmp_path / "faces"), str(tmp_path / "faces-packed"), shard_bytes=64 << 10, log=lambda message: None,
         progress=PackProgress(0, stream=io.StringIO()))
    workdir = tmp_path / "run"
    config = TrainConfig(workdir=str(workdir), data=str(tmp_path / "faces-packed"), steps=20, log_every=5,
                         sample_every=10, checkpoint_every=10, workers=2, wandb_group="group-a",
                         wandb_checkpoint_every=2, **TINY)
    metrics, layout = train(config, worker_env={"WANDB_API_KEY": FAKE_KEY})
    assert metrics["status"] == "finished"

    # Rank 0 alone started a run: one run folder, whose id is the workdir's.
    [run_file] = run_files(workdir)
    run = read_run(run_file)
    assert run.run_id == json.loads((workdir / "wandb-run.json").read_text())["id"]
    assert (run.project, run.group, run.name) == ("animegan", "group-a", "run")

    assert run.config["workers"] == 2 and run.config["replicas"] == 2
    assert run.config["batch_size"] == 8 and run.config["noise_dim"] == 16 and run.config["steps"] == 20

    rows = run.rows_with("loss/g")
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    for row in rows:
        assert set(LOSS_KEYS) <= set(row), set(LOSS_KEYS) - set(row)
        assert all(np.isfinite(row[key]) for key in LOSS_KEYS)
    assert rows[0]["lr/generator"] == pytest.approx(config.lr)

    samples = run.rows_with("samples/ema")
    assert [row["step"] for row in samples] == [10, 20]
    assert [row["samples/ema"]["caption"] for row in samples] == [
        "EMA generator on fixed noise, step 10", "EMA generator on fixed noise, step 20"]
    assert (run_file.parent / "files" / samples[0]["samples/ema"]["path"]).stat().st_size > 0
    [preview] = run.rows_with("data/preview")
    assert preview["step"] == 0 and preview["data/preview"]["width"] == 8 * 66 + 2  # 8x8 grid of 64 px + padding

    assert run.summary["status"] == "finished" and run.summary["step"] == 20
    assert run.summary["loss/g"] == {"min": min(row["loss/g"] for row in rows), "last": rows[-1]["loss/g"]}
    # The same rows went to metrics.jsonl, and the images did not (the workdir has its PNGs).
    jsonl = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["loss/g"]) for row in jsonl] == [(row["step"], row["loss/g"]) for row in rows]
    assert run.exit_code == 0
    # The pack, by reference; the 2nd checkpoint (step 20, also the last), copied.
    pack_artifact, checkpoint = run.artifacts
    assert pack_artifact["type"] == "dataset" and pack_artifact["refs"]["manifest.json"] == (
        f"file://{tmp_path}/faces-packed/manifest.json")
    assert checkpoint["name"] == f"checkpoint-{run.run_id}" and checkpoint["type"] == "checkpoint"
    assert set(checkpoint["aliases"]) == {"latest", "step-20"} and checkpoint["refs"] == {}
    assert "state.json" in checkpoint["files"] and checkpoint["metadata"]["step"] == 20

    # The run stops after logging step 20 but before checkpoint 20 is stored: the resume
    # continues the same W&B run, again from rank 0 alone, from checkpoint 10, and repeats
    # steps 15 and 20, which W&B holds already and must not be given again.
    shutil.rmtree(workdir / "checkpoints" / "checkpoint-00000020")
    train(config.replace(steps=30), worker_env={"WANDB_API_KEY": FAKE_KEY})
    first, second = [read_run(path) for path in run_files(workdir)]
    assert first.run_id == second.run_id == run.run_id
    assert [row["step"] for row in second.rows_with("loss/g")] == [25, 30]
    assert [row["step"] for row in second.rows_with("samples/ema")] == [30]
    assert second.rows_with("data/preview") == []  # the preview belongs to the start of training only
    assert second.summary["step"] == 30 and second.config["steps"] == 30
    # metrics.jsonl has every step once too, steps 15 and 20 as the resumed session computed them.
    assert [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [
        5, 10, 15, 20, 25, 30]
    # The summary covers both sessions.
    both = rows + second.rows_with("loss/g")
    assert second.summary["loss/g"] == {"min": min(row["loss/g"] for row in both), "last": both[-1]["loss/g"]}
    # The checkpoint resumed from (an input; offline, W&B can only log it), then the 2nd and the last.
    assert [artifact["type"] for artifact in second.artifacts] == ["dataset"] + ["checkpoint"] * 3
    assert [artifact["metadata"]["step"] for artifact in second.artifacts[1:]] == [10, 20, 30]

    # The key was in rank 0's environment; it is in no file the run wrote.
    assert files_containing(tmp_path, FAKE_KEY) == []


@pytest.mark.ray
def test_an_unreachable_server_falls_back_to_offline_and_training_finishes(ray_cluster, tmp_path, monkeypatch):
    # The driver's W&B variables travel to rank 0 with the job; the key is in the workers' environment.
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    config = TrainConfig(workdir=str(tmp_path), steps=10, log_every=5, sample_every=10, checkpoint_every=10,
                         workers=1, wandb_mode="online", **TINY)
    started = time.perf_counter()
    metrics, _ = train(config, worker_env={"WANDB_API_KEY": FAKE_KEY})
    elapsed = time.perf_counter() - started
    assert metrics["status"] == "finished" and metrics["step"] == 10
    # W&B gives up on the server within its own deadlines (~15 s) and the job goes on offline;
    # the bound leaves room for a busy machine but not for a hang.
    assert elapsed < 150, f"training with an unreachable W&B server took {elapsed:.0f} s"

    online_attempt = [path for path in run_files(tmp_path) if path.parent.name.startswith("run-")]
    offline = [path for path in run_files(tmp_path) if path.parent.name.startswith("offline-run-")]
    assert online_attempt, "W&B never tried the server (was the API key in the worker's environment?)"
    run = read_run(offline[0])
    assert [row["step"] for row in run.rows_with("loss/g")] == [5, 10]
    assert run.summary["status"] == "finished"
    assert files_containing(tmp_path, FAKE_KEY) == []
