"""The local default never joins a stray cluster: with no --address and no RAY_ADDRESS, `animegan train`
starts a Ray instance of its own, whatever `ray start --head` left recorded on the machine.

`ray start` records its cluster's address in <Ray's temp dir>/ray_current_cluster, and a bare
`ray.init()` joins whatever that file names: a running head (then Ray refuses num_cpus), or a
head that was killed (then it waits for a server that is gone). The stray head here is this
test's own: its own temp dir (RAY_TMPDIR, set for the stray head and the command only, so no
other Ray user on the machine reads its record) and free ports, and it is killed in a finally.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.ports import free_port
from tests.support.processes import group_alive, is_running, kill_tree

RAY = str(Path(sys.executable).with_name("ray"))
TINY_FLAGS = ["--noise-dim", "16", "--generator-width", "8", "--discriminator-width", "8", "--batch-size", "8",
              "--cpus-per-worker", "1", "--log-every", "1", "--sample-every", "1000", "--wandb-mode", "disabled"]


def start_stray_head(ray_tmpdir: Path, environment: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` in a session of its own; returns it and the address it recorded."""
    temp_dir = ray_tmpdir / "ray"
    address_file = temp_dir / "ray_current_cluster"
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         "--include-dashboard=false", "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (address_file.exists() and address_file.read_text().strip()):
        if head.poll() is not None or time.monotonic() > deadline:
            kill_tree(head)
            raise AssertionError(f"ray start --head did not record its address in {address_file}")
        time.sleep(0.2)
    return head, address_file.read_text().strip()


def train(workdir: Path, steps: int, environment: dict[str, str]) -> subprocess.CompletedProcess:
    """`animegan train` with no address, in a session of its own (so nothing it starts can outlive it)."""
    process = subprocess.Popen([sys.executable, "-m", "animegan", "train", "--workdir", str(workdir),
                                "--steps", str(steps), *TINY_FLAGS],
                               cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        output, errors = process.communicate(timeout=400)
    finally:
        if process.poll() is None or group_alive(process.pid):
            kill_tree(process)
    return subprocess.CompletedProcess(process.args, process.returncode, output, errors)


def explained(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_train_without_an_address_starts_its_own_instance_beside_a_running_and_a_killed_head(tmp_path):
    # Ray's socket paths under its temp dir must stay within 107 characters: a short folder in /tmp.
    ray_tmpdir = Path(tempfile.mkdtemp(prefix="ag-stray-", dir="/tmp"))
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment.update(RAY_TMPDIR=str(ray_tmpdir), PYTHONUNBUFFERED="1")
    head = None
    try:
        head, address = start_stray_head(ray_tmpdir, environment)

        # A head is running: a bare ray.init(num_cpus=...) would join it and fail at once.
        running = train(tmp_path / "run", 2, environment)
        assert running.returncode == 0, explained(running)
        assert "Started a local Ray instance" in running.stdout
        assert (f"Ray: a cluster started with `ray start` is recorded on this machine at {address}; this run "
                f"uses a local instance of its own (to run on that cluster: --address {address})") in running.stdout
        assert json.loads((tmp_path / "run" / "status.json").read_text())["step"] == 2

        # The head was killed: its record stays behind, naming a server that is gone.
        kill_tree(head)
        assert not is_running(head.pid) and (ray_tmpdir / "ray" / "ray_current_cluster").exists()
        killed = train(tmp_path / "run", 4, environment)
        assert killed.returncode == 0, explained(killed)
        assert "Resuming from" in killed.stdout and "Started a local Ray instance" in killed.stdout
        assert json.loads((tmp_path / "run" / "status.json").read_text())["step"] == 4
    finally:
        if head is not None and is_running(head.pid):
            kill_tree(head)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
