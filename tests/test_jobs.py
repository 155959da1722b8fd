"""The jobs/ entry points as real Ray jobs, on a Ray head that cluster/local.sh starts on 127.0.0.1.

The head is this module's own: its own temp dir and free ports, so it never meets the
test session's Ray instance or anyone else's on the machine, and `local.sh stop` ends
exactly its processes. Jobs go through jobs/submit.py and through Ray's own `ray job
submit`, both with jobs/runtime_env.yaml; they leave out its pip list (--no-pip): this
machine's Ray runs from a venv, which Ray would copy whole for the list
(benchmarks/job_submission.py: 3.5x the time of a job, 4.9 GiB), and every
requirement is installed already.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.support.job_server import JOB_ID, RecordingJobServer
from tests.support.ports import free_port

LOCAL_SH = str(REPO / "cluster" / "local.sh")
# Shaped like a W&B API key (40 hex digits), made up.
WANDB_KEY = "5ec7e7" + "0123456789abcdef" * 2 + "0123"
SUBMIT = [sys.executable, str(REPO / "jobs" / "submit.py")]
JOB_TIMEOUT = 600  # seconds; a smoke test takes about a minute on a busy 2-core machine


def live_processes() -> dict[int, str]:
    """Process id -> command line of every process that has not ended (zombies have)."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    processes = {}
    for line in listing.splitlines():
        pid, state, *command = line.split(None, 2)
        if not state.startswith("Z"):
            processes[int(pid)] = command[0] if command else ""
    return processes


def processes_naming(folder: Path) -> list[int]:
    """Live processes whose command line names `folder` (every Ray daemon names its temp dir)."""
    return [pid for pid, command in live_processes().items() if f"{folder}/" in command]


@dataclass
class LocalHead:
    address: str
    environment: dict[str, str]
    temp_dir: Path
    workspace: Path  # the current directory of every command: not the repository

    def run(self, command: list[str], timeout: float = JOB_TIMEOUT,
            environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=self.workspace, env=environment or self.environment, capture_output=True,
                              text=True, timeout=timeout)

    def stop(self) -> subprocess.CompletedProcess:
        return self.run([LOCAL_SH, "stop"], timeout=120)

    def logs(self) -> str:
        """The end of the head's own logs, to explain a failure."""
        lines = []
        for log in sorted(self.temp_dir.glob("session_*/logs/*.err"))[:8]:
            lines += [f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-15:]]
        return "\n".join(lines)


def explained(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-3000:]}"


# ------------------------------------------------------------------ without Ray: submission and entry points

RUNTIME_ENV = REPO / "jobs" / "runtime_env.yaml"


def test_runtime_env_takes_settings_from_the_shell_but_never_a_secret_and_leaves_the_file_alone(tmp_path):
    from animegan.submission import load_runtime_env

    before = RUNTIME_ENV.read_bytes()
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({"type": "service_account", "project_id": "faces-project", "private_key": "x"}))
    shell = {"WANDB_API_KEY": "k" * 40, "WANDB_PROJECT": "faces", "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
             "AWS_SECRET_ACCESS_KEY": "not ours", "HOME": "/home/someone"}
    runtime_env = load_runtime_env(RUNTIME_ENV, environ=shell, base_dir=REPO)

    assert runtime_env["working_dir"] == str(REPO)
    # The W&B key stays out: Ray shows a runtime env to anyone who can reach its dashboard.
    assert runtime_env["env_vars"] == {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
                                       "WANDB_PROJECT": "faces", "GOOGLE_CLOUD_PROJECT": "faces-project"}
    assert "k" * 40 not in json.dumps(runtime_env)
    assert "tensorflow>=2.18,<2.22" in runtime_env["pip"]["packages"]
    assert "pip" not in load_runtime_env(RUNTIME_ENV, pip=False, environ={}, base_dir=REPO)
    assert RUNTIME_ENV.read_bytes() == before


def test_submit_says_in_one_line_where_the_job_finds_its_wandb_key():
    from animegan.submission import wandb_key_line

    shell = {"WANDB_API_KEY": "k" * 40}
    with_key = wandb_key_line({"WANDB_PROJECT": "faces"}, shell)
    assert with_key == ("W&B: WANDB_API_KEY of this shell is not sent (a job's settings are public on the cluster); "
                        "the job reads WANDB_API_KEY on the cluster (cluster/local.sh: the shell that started the "
                        "head; GKE: the `wandb` Secret; cluster/gcp.yaml: Secret Manager's wandb-api-key), and logs "
                        "offline without it")
    assert wandb_key_line({}, {}).startswith("W&B: the job reads WANDB_API_KEY on the cluster (")
    # The job's mode decides (the runtime env file's, or the shell's forwarded over it), whatever the shell holds.
    assert wandb_key_line({"WANDB_MODE": "Offline"}, shell) == (
        "W&B: the job runs with WANDB_MODE=offline: it needs no W&B key")
    assert wandb_key_line({"WANDB_MODE": "online"}, {**shell, "WANDB_MODE": "disabled"}) == with_key


@pytest.mark.parametrize("content, message", [
    (None, "runtime env file not found"),
    ("working_dir: [.", "is not valid YAML"),
    ("- working_dir: .", "must hold a mapping"),
    ("env_vars:\n  TF_CPP_MIN_LOG_LEVEL: 2", "env_vars in .* must map names to strings"),
    ("working_dir: no-such-folder", "working_dir .*no-such-folder of .* is not a directory"),
    ("env_vars:\n  WANDB_API_KEY: k\n  MY_TOKEN: t", "env_vars in .* names MY_TOKEN, WANDB_API_KEY: a runtime env "
                                                  "is shown by Ray's dashboard, `ray job list` and its jobs API"),
])
def test_bad_runtime_env_files_are_refused_with_a_reason(tmp_path, content, message):
    from animegan.submission import load_runtime_env

    path = tmp_path / "runtime_env.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_runtime_env(path, environ={}, base_dir=tmp_path)


@pytest.mark.parametrize("entrypoint, message", [
    ([], "no entry point given: put the command after --"),
    (["--", "python", "jobs/trian.py"], "jobs/trian.py is not in the working dir"),
    (["--", "python", "jobs/train.py"], "cannot reach a Ray job server at http://127.0.0.1:"),
])
def test_submit_refuses_what_cannot_run_in_one_line(capsys, entrypoint, message):
    from animegan.submission import main

    code = main(["--address", f"http://127.0.0.1:{free_port()}", *entrypoint], runtime_env_file=RUNTIME_ENV,
                base_dir=REPO)
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1


def job_script(name: str) -> dict:
    """The globals of jobs/<name>.py, without running its main block."""
    return runpy.run_path(str(REPO / "jobs" / f"{name}.py"))


def _json_part(text: str) -> str:
    return text[text.index("{"):]


def test_train_smoke_test_is_a_tiny_short_run_and_flags_after_it_win(capsys, tmp_path):
    from animegan.job_entry import run_job

    argv = ["--smoke-test", "--dry-run", "--workdir", str(tmp_path), "--steps", "12"]
    assert run_job("train", argv, smoke_test=job_script("train")["SMOKE_TEST"], smoke_test_help="") == 0
    config = json.loads(_json_part(capsys.readouterr().out))
    assert (config["steps"], config["batch_size"], config["noise_dim"], config["generator_width"]) == (12, 8, 16, 8)
    assert (config["log_every"], config["checkpoint_every"], config["cpus_per_worker"]) == (5, 10, 1.0)
    assert config["workdir"] == str(tmp_path) and config["data"] is None


def test_inside_a_ray_job_a_run_without_workdir_goes_to_the_bucket(capsys, monkeypatch, tmp_path):
    from animegan.job_entry import BUCKET_ENV, RAY_JOB_MARKER, run_job

    monkeypatch.setenv(RAY_JOB_MARKER, "{}")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # as Ray sets it for a job's driver (not joined here)
    monkeypatch.delenv(BUCKET_ENV, raising=False)
    assert run_job("train", ["--dry-run"], smoke_test=[], smoke_test_help="") == 2
    assert "inside a Ray job, give --workdir gs://BUCKET/runs/NAME" in capsys.readouterr().err

    monkeypatch.setenv(BUCKET_ENV, str(tmp_path / "bucket") + "/")
    assert run_job("train", ["--dry-run"], smoke_test=[], smoke_test_help="") == 0
    config = json.loads(_json_part(capsys.readouterr().out))
    assert config["workdir"].startswith(str(tmp_path / "bucket" / "runs" / "train-"))
    assert config["cpus_per_worker"] == 1.0  # not the head node's cores


def test_generate_smoke_test_writes_next_to_the_checkpoint_unless_told_otherwise():
    smoke_test = job_script("generate")["smoke_test"]
    flags = smoke_test(["--checkpoint", "gs://bucket/runs/faces/"])
    assert flags[flags.index("--out") + 1] == "gs://bucket/runs/faces/smoke-test-images"
    assert flags[flags.index("--grid") + 1] == "gs://bucket/runs/faces/smoke-test-grid.png"
    assert "--overwrite" in flags and flags[flags.index("--workers") + 1] == "2"
    own_folder = smoke_test(["--checkpoint=gs://bucket/runs/faces", "--out", "gs://bucket/mine"])
    assert "--out" not in own_folder and "--overwrite" not in own_folder


def test_a_job_for_a_command_this_version_lacks_says_so(capsys):
    from animegan.job_entry import run_job

    assert run_job("nonesuch", ["--smoke-test"], smoke_test=[], smoke_test_help="") == 2
    assert ("this version of animegan has no `nonesuch` command (it has: train, generate, "
            in capsys.readouterr().err)


# ------------------------------------------------------------------ the clusters' Ray token (a recording job server)

# Shaped like a token of `ray get-auth-token --generate` (64 hex digits), made up; never written out whole.
RAY_TOKEN = "70ce11" + "fedcba9876543210" * 3 + "fedcba9876"


@pytest.fixture
def job_server():
    server = RecordingJobServer(token=RAY_TOKEN)
    yield server
    server.close()


@pytest.fixture
def small_job(tmp_path) -> Path:
    """A runtime env file whose working dir is a small folder with jobs/train.py: a quick upload."""
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (work / "jobs" / "train.py").write_text("print('trained')\n")
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(f"working_dir: {work}\nenv_vars:\n  TF_CPP_MIN_LOG_LEVEL: \"2\"\n")
    return runtime_env


def without_ray_token_settings() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith(("RAY_AUTH", "RAY_ADDRESS"))}


def test_submit_sends_the_token_file_on_every_request_and_shows_the_token_nowhere(job_server, small_job, tmp_path):
    command = [*SUBMIT, "--address", job_server.address, "--runtime-env", str(small_job), "--",
               "python", "jobs/train.py"]
    # Without a token, Ray's job server answers 401: one line says how to give it.
    refused = subprocess.run(command, env=without_ray_token_settings(), cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, explained(refused)
    assert f"the Ray cluster at {job_server.address} requires its token: pass --ray-token-file FILE" in refused.stderr
    assert [request.authorization for request in job_server.requests] == [None]

    job_server.requests.clear()
    token_file = tmp_path / "animegan-gke-token"
    token_file.write_text(RAY_TOKEN + "\n")  # as `kubectl get secret ... | base64 -d` leaves it
    result = subprocess.run([*command[:2], "--ray-token-file", str(token_file), *command[2:]],
                            env=without_ray_token_settings(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, explained(result)
    calls = [(request.method, request.path) for request in job_server.requests]
    # The version check, the working dir's upload, the submission, then status and logs until the job ended.
    assert calls[0] == ("GET", "/api/version") and ("POST", "/api/jobs/") in calls
    assert [method for method, path in calls if path.startswith("/api/packages/")] == ["GET", "PUT"]
    assert calls[-1] == ("GET", f"/api/jobs/{JOB_ID}/logs")
    assert {request.authorization for request in job_server.requests} == {f"Bearer {RAY_TOKEN}"}
    # Anywhere else it would be the job's, shown by the cluster's dashboard: not in a body, not in the output.
    assert not [request.path for request in job_server.requests if RAY_TOKEN.encode() in request.body]
    env_vars = job_server.submitted()["runtime_env"]["env_vars"]
    assert env_vars["TF_CPP_MIN_LOG_LEVEL"] == "2" and not [name for name in env_vars if name.startswith("RAY_AUTH")]
    assert RAY_TOKEN not in result.stdout + result.stderr
    assert f"  Ray token: from --ray-token-file {token_file}, sent as a header (never part of the job)\n" \
        in result.stdout
    assert (f"  logs: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token_file} ray job logs --address "
            f"{job_server.address} --follow {JOB_ID}\n") in result.stdout
    assert result.stdout.endswith(f"the job ran\nJob {JOB_ID} SUCCEEDED\n")


@pytest.mark.parametrize("source", ["RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"])
def test_submit_sends_the_token_of_rays_own_variables_without_ray_auth_mode(job_server, small_job, tmp_path,
                                                                              monkeypatch, capsys, source):
    from animegan.submission import main

    for name in ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"]:
        monkeypatch.delenv(name, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(RAY_TOKEN)
    monkeypatch.setenv(source, str(token_file) if source == "RAY_AUTH_TOKEN_PATH" else RAY_TOKEN)
    code = main(["--address", job_server.address, "--runtime-env", str(small_job), "--no-wait", "--",
                 "python", "jobs/train.py"], runtime_env_file=small_job, base_dir=tmp_path)
    output = capsys.readouterr()
    assert code == 0, output.err
    assert {request.authorization for request in job_server.requests} == {f"Bearer {RAY_TOKEN}"}
    assert RAY_TOKEN not in output.out + output.err
    where = f"RAY_AUTH_TOKEN_PATH ({token_file})" if source == "RAY_AUTH_TOKEN_PATH" else "RAY_AUTH_TOKEN"
    assert f"Ray token: from {where}, sent as a header" in output.out
    assert "logs: RAY_AUTH_MODE=token ray job logs " in output.out  # Ray's command needs the mode to read them


@pytest.mark.parametrize("content, message", [
    ("wrong-token-of-another-cluster", "rejected the token of --ray-token-file {file}: it is another cluster's, or "
                                       "the cluster's token changed"),
    ("\n", "--ray-token-file {file}: the token is empty"),
    ("two words", "--ray-token-file {file}: not a Ray token"),
    (None, "--ray-token-file {file}: no such file"),
])
def test_a_wrong_or_unreadable_token_file_is_one_line_that_never_shows_it(job_server, small_job, tmp_path, capsys,
                                                                         content, message):
    from animegan.submission import main

    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    code = main(["--address", job_server.address, "--runtime-env", str(small_job), "--ray-token-file",
                 str(token_file), "--", "python", "jobs/train.py"], runtime_env_file=small_job, base_dir=tmp_path)
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and message.format(file=token_file) in error, error
    assert "wrong-token" not in error and "two words" not in error
    # Nothing reached the server without the right token (a file that is no token is not even sent).
    assert not [request for request in job_server.requests if request.method == "POST"]


# ------------------------------------------------------------------ jobs on a real Ray head

@pytest.fixture(scope="module")
def local_head(tmp_path_factory):
    # Ray's socket paths under the temp dir must stay within 107 characters: a short folder in /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="animegan-ray-", dir="/tmp"))
    environment = {
        **os.environ,
        "ANIMEGAN_RAY_TEMP_DIR": str(temp_dir),
        "ANIMEGAN_RAY_PORT": str(free_port()),
        "ANIMEGAN_DASHBOARD_PORT": str(free_port()),
        "ANIMEGAN_CLIENT_PORT": str(free_port()),
        "ANIMEGAN_AGENT_PORT": str(free_port()),
        "ANIMEGAN_NUM_CPUS": "2",
        # The head's own token, in its temp dir: ~/.ray stays untouched.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(temp_dir / "auth_token"),
        # The head (and every job on it) takes the W&B key from the shell that started it; the jobs
        # run with WANDB_MODE=offline (conftest), so the made-up key is never sent anywhere.
        "WANDB_API_KEY": WANDB_KEY,
    }
    environment.pop("RAY_ADDRESS", None)
    head = LocalHead(address=f"http://127.0.0.1:{environment['ANIMEGAN_DASHBOARD_PORT']}", environment=environment,
                     temp_dir=temp_dir, workspace=tmp_path_factory.mktemp("submitter"))
    started = head.run([LOCAL_SH, "start"], timeout=240)
    if started.returncode != 0:
        logs = head.logs()
        head.stop()
        pytest.fail(f"cluster/local.sh start failed:\n{explained(started)}\n{logs}")
    assert f"Ray head running: dashboard and job server at {head.address}" in started.stdout
    assert "W&B: jobs on this head use WANDB_API_KEY from this shell (it is never sent with a job)" in started.stdout
    yield head
    stopped = head.stop()
    left = processes_naming(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert stopped.returncode == 0 and not left, explained(stopped)


@pytest.fixture(scope="module")
def smoke_run(local_head, tmp_path_factory):
    """`jobs/train.py --smoke-test` submitted with jobs/submit.py: (its output, its workdir)."""
    workdir = tmp_path_factory.mktemp("smoke-run")
    result = local_head.run([*SUBMIT, "--address", local_head.address, "--no-pip", "--",
                             "python", "jobs/train.py", "--smoke-test", "--workdir", str(workdir)])
    return result, workdir


@pytest.mark.ray
@pytest.mark.timeout(900)  # includes starting the head (the module's first Ray test)
def test_train_smoke_test_job_trains_a_tiny_model_and_writes_the_run(smoke_run):
    result, workdir = smoke_run
    assert result.returncode == 0, explained(result)
    assert "SUCCEEDED" in result.stdout.splitlines()[-1]
    assert "forwarded settings: WANDB_MODE" in result.stdout  # from this shell, not from a file

    config = json.loads((workdir / "config.json").read_text())
    assert (config["steps"], config["batch_size"], config["noise_dim"]) == (10, 8, 16)
    assert (config["generator_width"], config["discriminator_width"], config["cpus_per_worker"]) == (8, 8, 1.0)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10]
    assert all(math.isfinite(row["loss/d"]) and math.isfinite(row["loss/g"]) for row in rows)
    assert json.loads((workdir / "status.json").read_text())["status"] == "finished"
    assert json.loads((workdir / "checkpoints" / "checkpoint-00000010" / "state.json").read_text())["step"] == 10
    assert json.loads((workdir / "generator.json").read_text())["step"] == 10
    assert (workdir / "generator.keras").stat().st_size > 0
    assert Image.open(workdir / "samples" / "step-00000010.png").size[0] > 64


@pytest.mark.ray
def test_generate_job_through_ray_job_submit_writes_images_from_the_trained_run(local_head, smoke_run):
    _, workdir = smoke_run
    assert (workdir / "generator.keras").exists(), "the training job did not finish"
    runtime_env = local_head.run([*SUBMIT, "--no-pip", "--print-runtime-env"], timeout=120)
    assert runtime_env.returncode == 0, explained(runtime_env)
    assert json.loads(runtime_env.stdout)["working_dir"] == str(REPO)
    ray = str(Path(sys.executable).with_name("ray"))
    result = local_head.run([ray, "job", "submit", "--address", local_head.address,
                             "--runtime-env-json", runtime_env.stdout.strip(), "--",
                             "python", "jobs/generate.py", "--smoke-test", "--checkpoint", str(workdir)])
    assert result.returncode == 0, explained(result)

    images = sorted((workdir / "smoke-test-images").glob("*.png"))
    assert [image.name for image in images] == [f"{index:06d}.png" for index in range(32)]
    assert {Image.open(image).size for image in images} == {(64, 64)}
    manifest = json.loads((workdir / "smoke-test-images" / "manifest.json").read_text())
    assert (manifest["status"], manifest["count"], manifest["workers"]) == ("complete", 32, 2)
    assert Image.open(workdir / "smoke-test-grid.png").size[0] > 64


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_tune_smoke_test_job_runs_three_short_trials(local_head, tmp_path):
    result = local_head.run([*SUBMIT, "--address", local_head.address, "--no-pip", "--",
                             "python", "jobs/tune.py", "--smoke-test", "--workdir", str(tmp_path)])
    assert result.returncode == 0, explained(result)
    assert "SUCCEEDED" in result.stdout.splitlines()[-1]
    table = json.loads((tmp_path / "trials.json").read_text())
    assert (table["metric"], table["max_steps"], len(table["trials"])) == ("loss/g", 10, 3)
    # The smoke test fixes the batch size and noise dimension: its three trials differ in learning rate.
    assert len({trial["hyperparameters"]["lr"] for trial in table["trials"]}) == 3
    for trial in table["trials"]:
        assert trial["status"] in ("finished", "stopped early"), trial
        config = json.loads((Path(trial["workdir"]) / "config.json").read_text())
        assert (config["noise_dim"], config["generator_width"], config["batch_size"], config["steps"]) == (
            16, 8, 8, 10)
        rows = [json.loads(line) for line in (Path(trial["workdir"]) / "metrics.jsonl").read_text().splitlines()]
        # "steps" is the step of the trial's last report to Tune; a trial ASHA stopped may have trained on a step.
        assert rows and trial["steps"] <= rows[-1]["step"] <= 10
        assert all(math.isfinite(row["loss/g"]) for row in rows)
    assert json.loads((tmp_path / "best-config.json").read_text())["lr"] == next(
        trial["hyperparameters"]["lr"] for trial in table["trials"] if trial["trial"] == table["best_trial"])


@pytest.mark.ray
def test_a_failing_job_ends_submit_with_status_1_and_its_logs(local_head):
    result = local_head.run([*SUBMIT, "--address", local_head.address, "--no-pip", "--",
                             "python", "jobs/train.py", "--smoke-test", "--batch-size", "7", "--workers", "2"])
    assert result.returncode == 1, explained(result)
    assert "--batch-size 7 cannot be split evenly over 2 replicas" in result.stdout
    assert "FAILED" in result.stdout.splitlines()[-1]


@pytest.mark.ray
def test_a_token_file_opens_a_real_head_and_another_is_refused(local_head, tmp_path):
    # A shell with no Ray token settings at all: only --ray-token-file gives the head's token.
    environment = {name: value for name, value in local_head.environment.items() if not name.startswith("RAY_AUTH")}
    command = [*SUBMIT, "--address", local_head.address, "--no-pip", "--ray-token-file"]
    job = ["--", "python", "-c", "print('the head let this job in')"]
    token_file = local_head.temp_dir / "auth_token"
    result = local_head.run([*command, str(token_file), *job], environment=environment, timeout=300)
    assert result.returncode == 0 and "the head let this job in" in result.stdout, explained(result)
    assert token_file.read_text().strip() not in result.stdout + result.stderr

    other = tmp_path / "another-clusters-token"
    other.write_text("0123456789abcdef" * 4)
    refused = local_head.run([*command, str(other), *job], environment=environment, timeout=120)
    assert refused.returncode == 2, explained(refused)
    assert refused.stderr == (f"animegan: error: the Ray cluster at {local_head.address} rejected the token of "
                              f"--ray-token-file {other}: it is another cluster's, or the cluster's token changed\n")


def dashboard_get(head: LocalHead, path: str) -> str:
    """GET from the head's dashboard HTTP API, with its token, as anyone who can reach the dashboard can."""
    import urllib.request

    token = (head.temp_dir / "auth_token").read_text().strip()
    request = urllib.request.Request(head.address + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, path
        return response.read().decode("utf-8")


@pytest.mark.ray
def test_the_wandb_key_reaches_the_job_from_the_head_and_is_shown_nowhere(local_head):
    import hashlib

    digest = hashlib.sha256(WANDB_KEY.encode()).hexdigest()
    # The job says whether its driver and a Ray task on the head see the key, by its hash only.
    probe = ("import hashlib, os, ray\n"
             "seen = lambda: hashlib.sha256(os.environ.get('WANDB_API_KEY', '').encode()).hexdigest()\n"
             "ray.init()\n"
             "print('driver sees', seen())\n"
             "print('task sees', ray.get(ray.remote(seen).remote()))\n")
    job_id = "wandb-key-probe"
    # A shell that means to log online: WANDB_MODE unset here (the head's own stays offline, as conftest set it
    # before the head started, and the probe never starts W&B), so submit has the key to explain, not send.
    online = {name: value for name, value in local_head.environment.items() if name != "WANDB_MODE"}
    submitted = local_head.run([*SUBMIT, "--address", local_head.address, "--no-pip", "--submission-id", job_id,
                                "--", "python", "-c", probe], environment=online)
    assert submitted.returncode == 0, explained(submitted)
    assert f"driver sees {digest}" in submitted.stdout and f"task sees {digest}" in submitted.stdout
    [key_line] = [line.strip() for line in submitted.stdout.splitlines() if line.strip().startswith("W&B:")]
    assert key_line.startswith("W&B: WANDB_API_KEY of this shell is not sent (a job's settings are public on the "
                               "cluster); the job reads WANDB_API_KEY on the cluster (cluster/local.sh: "), key_line

    printed = local_head.run([*SUBMIT, "--no-pip", "--print-runtime-env"], timeout=120, environment=online)
    assert printed.returncode == 0 and "WANDB_API_KEY" not in json.loads(printed.stdout)["env_vars"]
    assert printed.stderr.startswith("W&B: WANDB_API_KEY of this shell is not sent") and printed.stderr.count("\n") == 1
    ray = str(Path(sys.executable).with_name("ray"))
    listed = local_head.run([ray, "job", "list", "--address", local_head.address], timeout=120)
    assert listed.returncode == 0 and job_id in listed.stdout, explained(listed)
    places = {
        "the submit command's output": submitted.stdout + submitted.stderr,
        "--print-runtime-env": printed.stdout + printed.stderr,
        "ray job list": listed.stdout + listed.stderr,
        "the jobs REST API": dashboard_get(local_head, "/api/jobs/"),
        "the job's record in the jobs REST API": dashboard_get(local_head, f"/api/jobs/{job_id}"),
        "the dashboard's job table (State API)": dashboard_get(local_head, "/api/v0/jobs?detail=1&limit=100"),
        "the job's logs": dashboard_get(local_head, f"/api/jobs/{job_id}/logs"),
    }
    assert job_id in places["the dashboard's job table (State API)"]
    assert [place for place, text in places.items() if WANDB_KEY in text] == []


@pytest.mark.ray
def test_local_head_stops_alone(local_head, ray_cluster):
    """Last in this module: `local.sh stop` ends this head's processes and no other Ray instance."""
    import ray

    ours = processes_naming(local_head.temp_dir)
    assert ours
    stopped = local_head.stop()
    assert stopped.returncode == 0, explained(stopped)
    assert not processes_naming(local_head.temp_dir)
    assert not set(ours) & set(live_processes())
    # The test session's own Ray instance still runs tasks.
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    second = local_head.stop()
    assert second.returncode == 0 and "No Ray head" in second.stdout
