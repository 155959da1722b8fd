"""What the jobs/ entry points share: --smoke-test, cluster defaults, and forwarding to the CLI.

`python jobs/train.py ARGS` runs `animegan train ARGS`, so a job takes exactly the
flags the command line does. Inside a Ray job (submitted with `ray job submit` or
jobs/submit.py) two defaults change, because the driver runs in a temporary copy of
the working dir on the head node and its workers run on other machines:

- a run without --workdir goes to $ANIMEGAN_BUCKET/runs/<command>-<timestamp> (the
  bucket the cluster configs in cluster/ name; smoke tests: .../smoke-tests/...),
  since a workdir inside the job's working dir would vanish with it and other nodes
  could not reach it. Without a bucket, a smoke test goes to the head's temp folder
  (fine on one machine) and any other run must give --workdir;
- --cpus-per-worker defaults to 1 instead of sharing the head node's cores (the
  launcher does that for any run that joins a cluster: Ray sets RAY_ADDRESS in a job).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from typing import Sequence

# The Ray job supervisor sets this in the environment of every job's entry point.
RAY_JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# gs://bucket (or any fsspec URL) under which jobs keep their runs; set on the nodes by cluster/.
BUCKET_ENV = "ANIMEGAN_BUCKET"

# A model small enough to train 10 steps on one CPU in seconds: what smoke tests train.
SMOKE_TEST_MODEL = ["--noise-dim", "16", "--generator-width", "8", "--discriminator-width", "8",
                    "--batch-size", "8", "--cpus-per-worker", "1"]


def in_ray_job() -> bool:
    return RAY_JOB_MARKER in os.environ


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in argv (the last one wins, as in argparse)."""
    value = None
    for position, argument in enumerate(argv):
        if argument == flag and position + 1 < len(argv):
            value = argv[position + 1]
        elif argument.startswith(flag + "="):
            value = argument[len(flag) + 1:]
    return value


def has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(argument == flag or argument.startswith(flag + "=") for argument in argv)


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def job_workdir(command: str, smoke_test: bool) -> str:
    """The workdir of a run started inside a Ray job without --workdir."""
    folder = "smoke-tests" if smoke_test else "runs"
    bucket = os.environ.get(BUCKET_ENV, "").rstrip("/")
    if bucket:
        return f"{bucket}/{folder}/{command}-{_timestamp()}"
    if smoke_test:
        # No bucket: fine on a one-machine cluster (cluster/local.sh), which is where a smoke
        # test without a bucket runs; a local path outlives the job's temporary working dir.
        return os.path.join(tempfile.gettempdir(), "animegan", folder, f"{command}-{_timestamp()}")
    raise ValueError(f"inside a Ray job, give --workdir gs://BUCKET/runs/NAME (storage every node reaches), "
                     f"or set {BUCKET_ENV} on the cluster; the job's own directory is temporary")


def cluster_defaults(command: str, argv: Sequence[str], smoke_test: bool) -> list[str]:
    """Flags a run inside a Ray job gets unless argv sets them (see the module docstring)."""
    if not in_ray_job() or command not in {"train", "tune"}:
        return []
    defaults = []
    if not has_flag(argv, "--workdir"):
        defaults += ["--workdir", job_workdir(command, smoke_test)]
    return defaults


def run_job(command: str, argv: Sequence[str], *, smoke_test: Sequence[str], smoke_test_help: str) -> int:
    """Runs `animegan COMMAND` with argv; --smoke-test puts `smoke_test` in front (argv still wins)."""
    from animegan import cli

    parser = argparse.ArgumentParser(
        prog=f"jobs/{command}.py", allow_abbrev=False,
        description=f"`animegan {command}` as a Ray job. Every flag but --smoke-test is passed on to "
                    f"`animegan {command}` (see `animegan {command} --help`).",
    )
    parser.add_argument("--smoke-test", action="store_true", help=smoke_test_help)
    args, rest = parser.parse_known_args(list(argv))
    if command not in cli.COMMANDS:
        print(f"animegan: error: this version of animegan has no `{command}` command "
              f"(it has: {', '.join(cli.COMMANDS)})", file=sys.stderr)
        return 2
    # argparse keeps the last value of a repeated flag: the caller's flags override the smoke test's.
    forwarded = [*smoke_test, *rest] if args.smoke_test else list(rest)
    try:
        forwarded = [*cluster_defaults(command, forwarded, args.smoke_test), *forwarded]
    except ValueError as error:
        print(f"animegan: error: {error}", file=sys.stderr)
        return 2
    return cli.main([command, *forwarded])
