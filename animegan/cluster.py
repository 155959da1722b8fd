"""Connecting to Ray: join a cluster, or start a local instance configured for this job.

A command joins a cluster only when told to (--address, or RAY_ADDRESS, which Ray
sets inside a job). Otherwise it starts a fresh local instance of its own: a bare
`ray.init()` would join whatever cluster an earlier `ray start --head` recorded on
the machine, running (Ray then refuses `num_cpus`) or killed (it waits for a
server that is gone).
"""

from __future__ import annotations

import os
import socket

from animegan.config import TrainConfig

# Environment every Ray worker of ours needs; a local instance passes these on,
# and jobs/runtime_env.yaml sets them on a cluster.
WORKER_ENV_DEFAULTS = {
    # Ray Train tees every print() of a worker through its logger too: each line would show twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # TensorFlow's C++ start-up chatter buries the job's own output.
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
DEFAULT_DASHBOARD_PORT = 8265
# Passed on to workers when set in the driver (storage endpoints, W&B settings).
_FORWARDED_PREFIXES = ("STORAGE_EMULATOR_HOST", "GCSFS_", "WANDB_", "ANIMEGAN_", "GOOGLE_")


# Never put secrets into a runtime env: Ray shows runtime envs on its dashboard, in `ray job list`
# and in its jobs API. Local workers inherit them from the driver's process environment through
# the raylet anyway; a cluster's nodes get them from the cluster (README, "Weights & Biases").
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential (WANDB_API_KEY, ..._TOKEN, ...)."""
    return any(marker in name.upper() for marker in _SECRET_MARKERS)


def worker_env() -> dict[str, str]:
    env = {key: os.environ.get(key, value) for key, value in WORKER_ENV_DEFAULTS.items()}
    env.update({key: value for key, value in os.environ.items()
                if key.startswith(_FORWARDED_PREFIXES) and not is_secret_name(key)})
    return env


def start_local(num_cpus: int | None = None, dashboard_port: int | None = None) -> str:
    """Starts a local Ray instance on 127.0.0.1; returns the dashboard URL."""
    import ray

    for key, value in WORKER_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    dashboard_port = dashboard_port or _dashboard_port()
    env = worker_env()
    # Ray Train's placement-group cleaner looks up "the" local instance's State API; with several
    # instances on one machine it finds none, and the workers' placement group of a run whose
    # controller was killed (a trial that ASHA stopped) is never freed. Name this one.
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls;
    # without it that actor warns every second. It also gives the user Ray's dashboard.
    context = ray.init(
        # "local": always a new instance, never the cluster `ray start` recorded on this machine.
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        runtime_env={"env_vars": env},
        dashboard_port=dashboard_port,
    )
    return f"http://{context.dashboard_url}"


def _dashboard_port() -> int:
    """Ray's usual dashboard port when it is free, else any free port."""
    for port in (DEFAULT_DASHBOARD_PORT, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port for Ray's dashboard")


def cluster_address(address: str | None) -> str | None:
    """The cluster a command joins: --address, else RAY_ADDRESS (set inside a Ray job), else None (local)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, log=print) -> bool:
    """Joins the cluster at `address` (or RAY_ADDRESS), or starts a local instance.

    Returns True when this call started Ray (and so the caller should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(address)
    if address:
        ray.init(address=address, logging_level="WARNING")
        log(f"Joined the Ray cluster at {address}")
        return False
    recorded = recorded_cluster()
    if recorded:
        log(f"Ray: a cluster started with `ray start` is recorded on this machine at {recorded}; this run uses "
            f"a local instance of its own (to run on that cluster: --address {recorded})")
    dashboard = start_local()
    log(f"Started a local Ray instance with {os.cpu_count()} CPUs; dashboard at {dashboard}")
    return True


def recorded_cluster() -> str | None:
    """The address `ray start --head` last recorded on this machine (running or not), or None."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # a Ray internal: without it the command only says less
        return None
    try:
        with open(get_ray_address_file(None), encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None


def check_resources(config: TrainConfig) -> None:
    """Fails at once, instead of waiting forever, when the cluster cannot host the workers."""
    import ray

    available = ray.cluster_resources()
    needed_cpus = config.workers * config.cpus_per_worker
    needed_gpus = config.workers * config.gpus_per_worker
    autoscaling = bool(os.environ.get("ANIMEGAN_ALLOW_AUTOSCALE"))
    if needed_cpus > available.get("CPU", 0) and not autoscaling:
        raise ValueError(f"{config.workers} workers x {config.cpus_per_worker:g} CPUs need {needed_cpus:g} CPUs, "
                         f"but the Ray cluster has {available.get('CPU', 0):g}; lower --workers or "
                         f"--cpus-per-worker (or set ANIMEGAN_ALLOW_AUTOSCALE=1 if an autoscaler will add nodes)")
    if needed_gpus > available.get("GPU", 0) and not autoscaling:
        raise ValueError(f"{config.workers} workers x {config.gpus_per_worker:g} GPUs need {needed_gpus:g} GPUs, "
                         f"but the Ray cluster has {available.get('GPU', 0):g} (set ANIMEGAN_ALLOW_AUTOSCALE=1 "
                         f"if an autoscaler will add them)")
