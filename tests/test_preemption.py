"""Preemption (animegan/preemption.py): SIGTERM to the driver of a 2-worker local run makes every worker finish
its step and rank 0 checkpoint that step; the command exits with 143, and running it again resumes at the next
step, with no step lost or trained twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animegan.preemption import PREEMPTED_EXIT_STATUS
from tests.support.images import write_folder
from tests.support.processes import group_alive, kill_tree

REPO = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--noise-dim", "16", "--generator-width", "8", "--discriminator-width", "8"]


def metric_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_sigterm_means_preempted_to_a_job_supervisor():
    assert PREEMPTED_EXIT_STATUS == 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_sigterm_to_the_driver_checkpoints_the_step_in_progress_and_the_rerun_resumes_after_it(tmp_path):
    workdir, faces = tmp_path / "run", tmp_path / "faces"
    write_folder(faces, 32)
    # A metrics row every step, so the workers agree to stop at the next step; no checkpoint but the one
    # SIGTERM asks for.
    command = [sys.executable, "-m", "animegan", "train", "--workdir", str(workdir), "--data", str(faces),
               "--workers", "2",
               "--cpus-per-worker", "1", "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "100000",
               "--sample-every", "100000", *TINY_FLAGS]
    # The command starts (and must stop) its own local Ray instance, apart from the test session's.
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment["PYTHONUNBUFFERED"] = "1"

    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        first = subprocess.Popen([*command, "--steps", "100000"], cwd=REPO, env=environment, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while len(metric_steps(workdir)) < 3:
            assert first.poll() is None, f"the run ended before SIGTERM:\n{first_log.read_text()}"
            assert time.monotonic() < deadline, f"no training after 400 s:\n{first_log.read_text()}"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGTERM)  # the driver only, as `ray job stop` or a VM's shutdown would
        first.wait(timeout=180)
        deadline = time.monotonic() + 60
        while group_alive(first.pid) and time.monotonic() < deadline:  # its Ray processes exit with it
            time.sleep(0.2)
        assert not group_alive(first.pid)
    finally:
        if first.poll() is None:
            kill_tree(first)
        elif group_alive(first.pid):
            os.killpg(first.pid, signal.SIGKILL)
    output = first_log.read_text()
    assert first.returncode == PREEMPTED_EXIT_STATUS, output
    assert "SIGTERM: the workers finish their step, checkpoint it and stop" in output
    ended = json.loads((workdir / "status.json").read_text())
    stopped_at = ended["step"]
    assert ended["status"] == "preempted" and stopped_at >= 3
    # Rank 0 checkpointed the step at which both workers stopped, and metrics.jsonl ends there.
    assert sorted(path.name for path in (workdir / "checkpoints").glob("checkpoint-*")) == [
        f"checkpoint-{stopped_at:08d}"]
    state = json.loads((workdir / "checkpoints" / f"checkpoint-{stopped_at:08d}" / "state.json").read_text())
    assert state["step"] == stopped_at
    assert metric_steps(workdir) == list(range(1, stopped_at + 1))
    assert f"stopped at step {stopped_at} as asked (SIGTERM)" in output

    second = subprocess.run([*command, "--steps", str(stopped_at + 2)], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"Resuming from {workdir}/checkpoints/checkpoint-{stopped_at:08d} (step {stopped_at})" in second.stdout
    # The resumed run's first step is the one after the preemption step: none lost, none trained twice.
    assert metric_steps(workdir) == list(range(1, stopped_at + 3))
    assert json.loads((workdir / "status.json").read_text())["status"] == "finished"
