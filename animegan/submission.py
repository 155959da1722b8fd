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

The clusters in cluster/ require Ray's token on their dashboard and jobs API. The
submitter reads it from the file named by --ray-token-file, else from Ray's own
variables (RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH), and sends it with every
request as `Authorization: Bearer ...`, the header Ray's job server checks. It never
prints it and never puts it in the runtime env. Without either, Ray's own client
sends ~/.ray/auth_token when RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import json
import os
import re
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
# What a Ray token may look like: one word of printable ASCII (Ray makes 64 hex digits), short enough for a header.
_TOKEN = re.compile(r"[!-~]{8,4096}")


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


def ray_token(token_file: str | None, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(the Ray token to send, where it came from), or (None, "") to leave it to Ray's own client.

    The file named by --ray-token-file wins; else Ray's own variables, in Ray's order:
    RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH (unless RAY_AUTH_MODE=disabled).
    Errors name the file, never its content.
    """
    if token_file:
        source, path = f"--ray-token-file {token_file}", token_file
    elif environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, ""
    elif environ.get("RAY_AUTH_TOKEN", "").strip():
        return _checked_token(environ["RAY_AUTH_TOKEN"], "RAY_AUTH_TOKEN"), "RAY_AUTH_TOKEN"
    elif environ.get("RAY_AUTH_TOKEN_PATH"):
        path = environ["RAY_AUTH_TOKEN_PATH"]
        source = f"RAY_AUTH_TOKEN_PATH ({path})"
    else:
        return None, ""
    try:
        text = Path(path).expanduser().read_text(encoding="ascii")
    except FileNotFoundError:
        raise ValueError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: cannot read it as a token ({type(error).__name__})") from None
    return _checked_token(text, source), source


def _checked_token(text: str, source: str) -> str:
    token = text.strip()
    if not token:
        raise ValueError(f"{source}: the token is empty")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"{source}: not a Ray token (one word of 8 to 4096 printable characters, as "
                         f"`ray get-auth-token` prints)")
    return token


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
           submission_id: str | None = None, token: str | None = None):
    """Submits the job, with `token` (if any) on every request; returns (client, submission id)."""
    from ray.job_submission import JobSubmissionClient

    # The client keeps the header for all its requests (the version check, the working dir's upload,
    # status and logs), and Ray's own client adds none when one is given.
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else None)
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
    parser.add_argument("--ray-token-file", metavar="FILE",
                        help="the cluster's Ray token, sent as a header and never shown (default: Ray's own "
                             "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; with neither, ~/.ray/auth_token if "
                             "RAY_AUTH_MODE=token)")
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
        token, token_source = ray_token(args.ray_token_file, os.environ)
        client, job_id = _submit_or_explain(args.address, entrypoint, runtime_env, args.submission_id,
                                            token, token_source)
    except ValueError as error:
        print(f"animegan: error: {error}", file=sys.stderr)
        return 2
    forwarded = sorted(set(runtime_env.get("env_vars", {})) & set(FORWARDED_ENV))
    ray_command = _ray_command(args.ray_token_file, os.environ)
    print(f"Submitted {job_id} to {args.address}: {shlex.join(entrypoint)}\n"
          f"  forwarded settings: {', '.join(forwarded) or 'none'}\n"
          f"  {wandb_key_line(runtime_env.get('env_vars', {}), os.environ)}\n"
          + (f"  Ray token: from {token_source}, sent as a header (never part of the job)\n" if token else "")
          + f"  logs: {ray_command} job logs --address {args.address} --follow {job_id}\n"
          f"  stop: {ray_command} job stop --address {args.address} {job_id}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nStopped following; {job_id} keeps running on the cluster.", file=sys.stderr)
        return 130
    print(f"Job {job_id} {status.value}")
    return 0 if status.value == "SUCCEEDED" else 1


def _ray_command(token_file: str | None, environ: Mapping[str, str]) -> str:
    """`ray`, with what Ray's own command needs to find the token submit used (its path, never the token)."""
    if token_file:
        return f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={shlex.quote(token_file)} ray"
    if not environ.get("RAY_AUTH_MODE") and (environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH")):
        return "RAY_AUTH_MODE=token ray"  # Ray's command reads its variables only in token mode
    return "ray"


def _submit_or_explain(address: str, entrypoint: Sequence[str], runtime_env: dict[str, Any],
                       submission_id: str | None, token: str | None = None, token_source: str = ""):
    """submit(), with an unreachable or locked cluster turned into a one-line ValueError."""
    from ray.exceptions import AuthenticationError

    try:
        return submit(address, entrypoint, runtime_env, submission_id, token)
    except ConnectionError as error:
        raise ValueError(f"cannot reach a Ray job server at {address} ({str(error).splitlines()[0]}); "
                         f"start one with cluster/local.sh start, or open a tunnel to the cluster's "
                         f"dashboard (ray dashboard cluster/gcp.yaml, kubectl port-forward)") from None
    except AuthenticationError as error:
        # Ray's message starts "Authentication failed" for a wrong token (403), "... required" for none (401).
        if token and str(error).startswith("Authentication failed"):
            raise ValueError(f"the Ray cluster at {address} rejected the token of {token_source}: it is "
                             f"another cluster's, or the cluster's token changed") from None
        raise ValueError(f"the Ray cluster at {address} requires its token: pass --ray-token-file FILE, or set "
                         f"RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN_PATH if the token is not in "
                         f"~/.ray/auth_token)") from None
