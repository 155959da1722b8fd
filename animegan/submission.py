"""Submitting jobs from a laptop: jobs/runtime_env.yaml plus the submitter's settings, then follow the job.

Ray's runtime_env never reads the submitter's environment, so jobs/submit.py loads
the YAML and adds, at submit time, the settings named in FORWARDED_ENV that are set
in this shell (W&B project and mode, Google Cloud project, animegan's own switches).

No secret ever travels this way: Ray shows a job's runtime env on its dashboard, in
`ray job list` and in its jobs API to anyone who can reach the dashboard. The W&B
key reaches a job from the cluster's side (README, "Weights & Biases"): the shell
that ran `cluster/local.sh start`, a Kubernetes Secret in the pods' environment
(cluster/kuberay/), or Secret Manager read by each node's setup (cluster/gcp.yaml).
A runtime env file that names a secret is refused, and the submitter says in one
line where the job will find its key.

A Google service-account key file (GOOGLE_APPLICATION_CREDENTIALS) is a path on
this machine, so it is not forwarded: the nodes reach Cloud Storage with their own
service account (cluster/gcp.yaml, Workload Identity on GKE); only the project it
names is passed on as GOOGLE_CLOUD_PROJECT.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from animegan.cluster import is_secret_name

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Settings forwarded from the submitter's environment into the job's env_vars, when set. None is a secret.
FORWARDED_ENV = (
    "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_RUN_GROUP",
    "WANDB_TAGS", "GOOGLE_CLOUD_PROJECT", "ANIMEGAN_BUCKET", "ANIMEGAN_ALLOW_AUTOSCALE", "ANIMEGAN_DEBUG",
)
# W&B modes in which a job needs no key.
_KEYLESS_MODES = {"offline", "dryrun", "disabled"}
# Seconds between polls of a followed job's status and logs.
POLL_SECONDS = 2.0


def load_runtime_env(path: str | Path, *, pip: bool = True, environ: Mapping[str, str] | None = None,
                     base_dir: str | Path | None = None) -> dict[str, Any]:
    """The runtime env of `path`, with the forwarded settings of `environ` added to env_vars.

    A relative working_dir is taken relative to `base_dir` (default: the current directory,
    as `ray job submit` does). pip=False drops the pip requirements (nodes that already have them).
    """
    import yaml

    environ = os.environ if environ is None else environ
    path = Path(path)
    try:
        runtime_env = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"runtime env file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"runtime env file {path} is not valid YAML: {error}") from None
    if not isinstance(runtime_env, dict):
        raise ValueError(f"runtime env file {path} must hold a mapping (working_dir, pip, env_vars, ...)")
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(isinstance(value, str) for value in env_vars.values()):
        raise ValueError(f"env_vars in {path} must map names to strings (quote numbers: \"0\")")
    secrets = sorted(name for name in env_vars if is_secret_name(name))
    if secrets:
        raise ValueError(f"env_vars in {path} names {', '.join(secrets)}: a runtime env is shown by Ray's "
                         f"dashboard, `ray job list` and its jobs API to anyone who can reach the cluster; give the "
                         f"nodes the secret instead (README, \"Weights & Biases\")")

    if "working_dir" in runtime_env and "://" not in str(runtime_env["working_dir"]):
        working_dir = Path(base_dir or Path.cwd(), runtime_env["working_dir"]).resolve()
        if not working_dir.is_dir():
            raise ValueError(f"working_dir {working_dir} of {path} is not a directory")
        runtime_env["working_dir"] = str(working_dir)
    if not pip:
        runtime_env.pop("pip", None)
    env_vars = {**env_vars, **forwarded_settings(environ)}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def forwarded_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of FORWARDED_ENV set in `environ`, and the project of a service-account key file."""
    settings = {name: environ[name] for name in FORWARDED_ENV if environ.get(name) and not is_secret_name(name)}
    key_file = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file and "GOOGLE_CLOUD_PROJECT" not in settings:
        try:
            project = json.loads(Path(key_file).read_text()).get("project_id")
        except (OSError, ValueError, AttributeError):
            project = None  # not a readable key file: Google's libraries will say so where it matters
        if project:
            settings["GOOGLE_CLOUD_PROJECT"] = project
    return settings


def wandb_key_line(env_vars: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """One line: where the job will find its W&B key, or that it needs none. Never the key.

    `env_vars` are the job's (the runtime env file's and the forwarded settings): they, not
    this shell, decide the job's WANDB_MODE. `environ` is this shell, whose key is not sent.
    """
    mode = env_vars.get("WANDB_MODE", "").lower()
    if mode in _KEYLESS_MODES:
        return f"W&B: the job runs with WANDB_MODE={mode}: it needs no W&B key"
    unsent = "WANDB_API_KEY of this shell is not sent (a job's settings are public on the cluster); " \
        if environ.get("WANDB_API_KEY") else ""
    return (f"W&B: {unsent}the job reads WANDB_API_KEY on the cluster (cluster/local.sh: the shell that started "
            f"the head; GKE: the `wandb` Secret; cluster/gcp.yaml: Secret Manager's wandb-api-key), and logs "
            f"offline without it")


def check_entrypoint(entrypoint: Sequence[str], runtime_env: Mapping[str, Any]) -> None:
    """A script named by the entry point must exist in the working dir that is uploaded."""
    if not entrypoint:
        raise ValueError("no entry point given: put the command after --, e.g. -- python jobs/train.py --smoke-test")
    working_dir = runtime_env.get("working_dir")
    if not working_dir or "://" in str(working_dir):
        return
    for argument in entrypoint:
        if argument.endswith(".py") and not Path(argument).is_absolute():
            if not (Path(working_dir) / argument).is_file():
                raise ValueError(f"{argument} is not in the working dir {working_dir}, "
                                 f"which is what the job gets")


def submit(address: str, entrypoint: Sequence[str], runtime_env: dict[str, Any],
           submission_id: str | None = None):
    """Submits the job; returns (client, submission id)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env,
                               submission_id=submission_id)
    return client, job_id


def follow(client, job_id: str, *, timeout: float | None = None, out=sys.stdout):
    """Prints the job's logs as they grow until it ends; returns its final JobStatus.

    Raises TimeoutError after `timeout` seconds (the job keeps running).
    """
    started = time.monotonic()
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        out.write(logs[printed:])
        out.flush()
        printed = len(logs)
        if status.is_terminal():
            return status
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"job {job_id} still {status.value} after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def main(argv: Sequence[str], *, runtime_env_file: Path, base_dir: Path) -> int:
    """jobs/submit.py: submit ENTRYPOINT with the runtime env and forwarded settings, follow it to the end."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="jobs/submit.py", allow_abbrev=False,
        description="Submit a job to a Ray cluster with jobs/runtime_env.yaml plus the W&B and Google Cloud "
                    "settings of this shell (never written to a file, never a secret: the W&B key comes from "
                    "the cluster), then print its logs until it ends. "
                    "Exit status: 0 when the job succeeded, 1 when it failed or was stopped.",
        epilog=f"forwarded when set: {', '.join(FORWARDED_ENV)}; GOOGLE_APPLICATION_CREDENTIALS gives "
               f"GOOGLE_CLOUD_PROJECT (the key file stays here)",
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS,
                        help=f"the cluster's dashboard URL (default: RAY_ADDRESS, else {DEFAULT_ADDRESS})")
    parser.add_argument("--runtime-env", default=str(runtime_env_file), metavar="YAML",
                        help=f"runtime env file; a relative working_dir is relative to {base_dir} "
                             f"(default: {runtime_env_file})")
    parser.add_argument("--no-pip", action="store_true",
                        help="leave out the pip requirements when the nodes already have them, as a laptop's "
                             ".venv does: Ray then makes no per-job virtualenv (from a venv, a full copy)")
    parser.add_argument("--submission-id", help="the job's id (default: chosen by Ray)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    parser.add_argument("--print-runtime-env", action="store_true",
                        help="print the runtime env as JSON (it holds no secret) and exit, "
                             "for `ray job submit --runtime-env-json \"$(...)\"`")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER,
                        help="the command to run on the cluster, after --: -- python jobs/train.py --smoke-test")
    args = parser.parse_args(list(argv))
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    try:
        runtime_env = load_runtime_env(args.runtime_env, pip=not args.no_pip, base_dir=base_dir)
        if args.print_runtime_env:
            print(json.dumps(runtime_env))
            # On stderr: stdout is the JSON that `$(...)` captures. A key that used to ride along is missed here.
            print(wandb_key_line(runtime_env.get("env_vars", {}), os.environ), file=sys.stderr)
            return 0
        check_entrypoint(entrypoint, runtime_env)
        client, job_id = _submit_or_explain(args.address, entrypoint, runtime_env, args.submission_id)
    except ValueError as error:
        print(f"animegan: error: {error}", file=sys.stderr)
        return 2
    forwarded = sorted(set(runtime_env.get("env_vars", {})) & set(FORWARDED_ENV))
    print(f"Submitted {job_id} to {args.address}: {shlex.join(entrypoint)}\n"
          f"  forwarded settings: {', '.join(forwarded) or 'none'}\n"
          f"  {wandb_key_line(runtime_env.get('env_vars', {}), os.environ)}\n"
          f"  logs: ray job logs --address {args.address} --follow {job_id}\n"
          f"  stop: ray job stop --address {args.address} {job_id}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nStopped following; {job_id} keeps running on the cluster.", file=sys.stderr)
        return 130
    print(f"Job {job_id} {status.value}")
    return 0 if status.value == "SUCCEEDED" else 1


def _submit_or_explain(address: str, entrypoint: Sequence[str], runtime_env: dict[str, Any],
                       submission_id: str | None):
    """submit(), with an unreachable or locked cluster turned into a one-line ValueError."""
    from ray.exceptions import AuthenticationError

    try:
        return submit(address, entrypoint, runtime_env, submission_id)
    except ConnectionError as error:
        raise ValueError(f"cannot reach a Ray job server at {address} ({str(error).splitlines()[0]}); "
                         f"start one with cluster/local.sh start, or open a tunnel to the cluster's "
                         f"dashboard (ray dashboard cluster/gcp.yaml, kubectl port-forward)") from None
    except AuthenticationError:
        raise ValueError(f"the Ray cluster at {address} requires its token: set RAY_AUTH_MODE=token "
                         f"(and RAY_AUTH_TOKEN_PATH if the token is not in ~/.ray/auth_token)") from None
