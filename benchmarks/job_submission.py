"""What a Ray job costs before it runs: the pip list of jobs/runtime_env.yaml against --no-pip.

    .venv/bin/python benchmarks/job_submission.py                  # trivial jobs: no pip, pip (first), pip (again)
    .venv/bin/python benchmarks/job_submission.py --smoke-test     # also time `jobs/train.py --smoke-test`

Starts its own Ray head with cluster/local.sh (own temp dir and free ports, token
auth), submits jobs with the same code as jobs/submit.py and times each from
submission to SUCCEEDED:

- `no pip`: jobs/runtime_env.yaml without its pip list (jobs/submit.py --no-pip);
- `pip, first job`: with the pip list: Ray builds the per-node virtualenv (from a
  venv, as here, by copying the whole venv) before the job starts;
- `pip, next job`: the same list again: Ray reuses that virtualenv.

The entry point only imports animegan and TensorFlow, so the times are the
runtime env's. Each time is reported with its ratio to `no pip` measured in the
same run, with the disk the runtime envs take on the node. Printed and written
as JSON (default benchmarks/results/job_submission.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from animegan.submission import follow, load_runtime_env, submit  # noqa: E402

LOCAL_SH = str(REPOSITORY / "cluster" / "local.sh")
DEFAULT_JSON = REPOSITORY / "benchmarks" / "results" / "job_submission.json"
IMPORT_ONLY = ["python", "-c", "import animegan.training, tensorflow"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def folder_bytes(folder: Path) -> int:
    return sum(path.lstat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def timed_job(address: str, entrypoint: list[str], *, pip: bool) -> float:
    runtime_env = load_runtime_env(REPOSITORY / "jobs" / "runtime_env.yaml", pip=pip, base_dir=REPOSITORY)
    started = time.perf_counter()
    client, job_id = submit(address, entrypoint, runtime_env)
    logs = io.StringIO()
    status = follow(client, job_id, timeout=1800, out=logs)
    seconds = time.perf_counter() - started
    if status.value != "SUCCEEDED":
        raise SystemExit(f"job {job_id} {status.value}:\n{logs.getvalue()[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="also time jobs/train.py --smoke-test (no pip)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"where to write results (default {DEFAULT_JSON})")
    args = parser.parse_args()

    temp_dir = Path(tempfile.mkdtemp(prefix="animegan-bench-ray-", dir="/tmp"))
    dashboard_port = free_port()
    environment = {**os.environ, "ANIMEGAN_RAY_TEMP_DIR": str(temp_dir), "ANIMEGAN_RAY_PORT": str(free_port()),
                   "ANIMEGAN_DASHBOARD_PORT": str(dashboard_port), "ANIMEGAN_CLIENT_PORT": str(free_port()),
                   "ANIMEGAN_AGENT_PORT": str(free_port()), "ANIMEGAN_NUM_CPUS": "2", "RAY_AUTH_MODE": "token",
                   "RAY_AUTH_TOKEN_PATH": str(temp_dir / "auth_token")}
    environment.pop("RAY_ADDRESS", None)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(temp_dir / "auth_token"),
                       "WANDB_MODE": "offline"})
    address = f"http://127.0.0.1:{dashboard_port}"
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "in_venv": sys.prefix != sys.base_prefix}, "runs": []}
    started = time.perf_counter()
    subprocess.run([LOCAL_SH, "start"], env=environment, check=True, capture_output=True, text=True)
    results["head_start_seconds"] = round(time.perf_counter() - started, 1)
    try:
        runs = [("no pip", IMPORT_ONLY, False), ("pip, first job", IMPORT_ONLY, True),
                ("pip, next job", IMPORT_ONLY, True)]
        if args.smoke_test:
            runs.append(("train --smoke-test, no pip", ["python", "jobs/train.py", "--smoke-test",
                                                        "--workdir", str(temp_dir / "smoke-run")], False))
        for name, entrypoint, pip in runs:
            seconds = timed_job(address, entrypoint, pip=pip)
            results["runs"].append({"run": name, "seconds": round(seconds, 1)})
            print(f"{name:28s} {seconds:7.1f} s", flush=True)
        baseline = results["runs"][0]["seconds"]
        for run in results["runs"]:
            run["ratio_to_no_pip"] = round(run["seconds"] / baseline, 2)
        environments = list(temp_dir.glob("session_*/runtime_resources/pip"))
        results["pip_environment_bytes"] = sum(folder_bytes(folder) for folder in environments)
    finally:
        subprocess.run([LOCAL_SH, "stop"], env=environment, capture_output=True, text=True)
        shutil.rmtree(temp_dir, ignore_errors=True)

    print(f"\nhead start: {results['head_start_seconds']} s")
    for run in results["runs"]:
        print(f"{run['run']:28s} {run['seconds']:7.1f} s  x{run['ratio_to_no_pip']:.2f} of no pip")
    print(f"pip virtualenvs on the node: {results['pip_environment_bytes'] / 2**30:.2f} GiB")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"Written: {args.json}")


if __name__ == "__main__":
    main()
