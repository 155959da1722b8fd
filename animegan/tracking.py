"""Weights & Biases: one readable run per training run, written by Ray Train rank 0, never in training's way.

Only rank 0 owns a MetricsSink, so only rank 0 ever starts a W&B run, through a
WandbWriter (wandb_writer.py) whose own thread makes every W&B call: a slow or
unreachable server costs training nothing, a run that cannot reach the server
falls back to offline, and a W&B failure of any kind is a warning, never an error.
This module decides the run's settings and identity and attaches the writer.

Settings, strongest first: the config's wandb_* fields (flags), the driver's
W&B environment variables (forwarded with the job, see `driver_environment`),
the worker's own environment, then defaults. The API key is never forwarded or
stored: W&B reads it on rank 0's machine from WANDB_API_KEY or its login file.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
import tempfile
from typing import Callable, Mapping, Sequence
from urllib.parse import urlparse

from animegan import storage
from animegan.config import WANDB_MODES, TrainConfig
from animegan.wandb_writer import (  # noqa: F401 (FINISH_TIMEOUT_SECONDS, STEP_METRIC: part of this API)
    DEFAULT_BASE_URL, FINISH_TIMEOUT_SECONDS, STEP_METRIC, RunOptions, WandbWriter)
from animegan.workdir import RunLayout

DEFAULT_PROJECT = "animegan"
PREVIEW_KEY = "data/preview"  # augmented real training images, once at the start
PREVIEW_COUNT = 64
# W&B waits 90 s by default for the server to accept a run; a job should not.
DEFAULT_INIT_TIMEOUT_SECONDS = 30.0

# W&B settings of the driver that travel to the workers with the job, so that
# `WANDB_PROJECT=x animegan train --address ...` means the same on a cluster as
# locally. WANDB_API_KEY is deliberately absent: secrets do not ride in job configs.
FORWARDED_VARIABLES = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_TAGS",
                       "WANDB_BASE_URL", "WANDB_DIR", "WANDB_INIT_TIMEOUT", "WANDB_CONSOLE")
# W&B's older names for its modes.
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
_ID_CHARACTERS = string.ascii_lowercase + string.digits


def driver_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's W&B settings to pass to the workers; raises ValueError on a bad value."""
    environ = os.environ if environ is None else environ
    forwarded = {name: environ[name] for name in FORWARDED_VARIABLES if environ.get(name)}
    mode = forwarded.get("WANDB_MODE")
    if mode is not None and _MODE_ALIASES.get(mode, mode) not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    timeout = forwarded.get("WANDB_INIT_TIMEOUT")
    if timeout is not None:
        try:
            valid = float(timeout) > 0
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"WANDB_INIT_TIMEOUT must be a positive number of seconds, got {timeout!r}")
    return forwarded


def resolve_options(config: TrainConfig, layout: RunLayout, run_id: str, forwarded: Mapping[str, str],
                    environ: Mapping[str, str]) -> RunOptions:
    """Flags, then the driver's variables, then this machine's, then defaults."""

    def setting(name: str) -> str | None:
        return forwarded.get(name) or environ.get(name) or None

    mode = requested_mode(config, forwarded, environ)
    base_url = setting("WANDB_BASE_URL")
    offline_reason = None
    if mode in (None, "online") and not api_key_available(base_url, environ):
        mode, offline_reason = "offline", "no W&B API key found (set WANDB_API_KEY or run `wandb login`)"
    tags_text = config.wandb_tags if config.wandb_tags is not None else setting("WANDB_TAGS") or ""
    directory = setting("WANDB_DIR") or (
        storage.absolute(layout.workdir) if storage.is_local(layout.workdir)
        else os.path.join(tempfile.gettempdir(), "animegan-wandb"))
    try:
        init_timeout = float(setting("WANDB_INIT_TIMEOUT") or DEFAULT_INIT_TIMEOUT_SECONDS)
    except ValueError:
        init_timeout = DEFAULT_INIT_TIMEOUT_SECONDS
    return RunOptions(
        mode=mode or "online",
        offline_reason=offline_reason,
        project=config.wandb_project or setting("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=config.wandb_entity or setting("WANDB_ENTITY"),
        group=config.wandb_group or setting("WANDB_RUN_GROUP"),
        tags=tuple(tag.strip() for tag in tags_text.split(",") if tag.strip()),
        base_url=base_url,
        directory=directory,
        init_timeout=init_timeout,
        # W&B's console capture wraps the process's stdout; a stuck W&B must never hold up a print.
        console=setting("WANDB_CONSOLE") or "off",
        run_id=run_id,
        name=run_name(layout.workdir),
        workdir=layout.workdir,
        log_model=config.wandb_log_model,
        checkpoint_every=config.checkpoint_every,
        wandb_checkpoint_every=config.wandb_checkpoint_every,
    )


def requested_mode(config: TrainConfig, forwarded: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    """--wandb-mode, else WANDB_MODE (driver's, then this machine's); None means W&B's default."""
    mode = config.wandb_mode or forwarded.get("WANDB_MODE") or environ.get("WANDB_MODE")
    mode = _MODE_ALIASES.get(mode, mode) if mode else None
    # An unknown WANDB_MODE on a worker (the driver's is checked up front) falls back to the default.
    return mode if mode in WANDB_MODES else None


def api_key_available(base_url: str | None, environ: Mapping[str, str]) -> bool:
    """Whether W&B will find credentials: WANDB_API_KEY, an identity token, or its login (.netrc) entry."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(base_url or DEFAULT_BASE_URL).hostname
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_name(workdir: str) -> str:
    """The run's display name: the workdir's last part (a timestamp, or a tuning trial's folder)."""
    return workdir.rstrip("/").rsplit("/", 1)[-1] or "animegan"


def run_identity(layout: RunLayout) -> str:
    """The W&B run id of this workdir: made once and stored in it, so every resume continues the same run.

    Stored rather than derived from the path, so that a fresh run in a reused
    path (or each tuning trial in its own workdir) is a new W&B run.
    """
    if storage.exists(layout.wandb_run):
        return json.loads(storage.read_text(layout.wandb_run))["id"]
    run_id = "".join(secrets.choice(_ID_CHARACTERS) for _ in range(8))
    storage.write_text(layout.wandb_run, json.dumps({"id": run_id}) + "\n")
    return run_id


def start_run(config: TrainConfig, layout: RunLayout, forwarded: Mapping[str, str], *,
              log: Callable[[str], None] = print) -> WandbWriter | None:
    """The W&B writer for this run, or None when W&B is disabled or cannot even be configured."""
    try:
        if requested_mode(config, forwarded, os.environ) == "disabled":
            return None
        options = resolve_options(config, layout, run_identity(layout), forwarded, os.environ)
    except Exception as error:  # noqa: BLE001 (W&B must never stop training)
        log(f"W&B: not logging this run ({type(error).__name__}: {error})")
        return None
    # Credentials in URLs (--data https://user:pass@..., signed URLs) never reach the dashboard.
    run_config = storage.redacted({**config.to_dict(), "replicas": config.replicas})
    return WandbWriter(options, run_config, log=log)


def attach(sink, config: TrainConfig, layout: RunLayout, forwarded: Mapping[str, str], *, start_step: int,
           source, items: Sequence[str], resumed_from: str | None = None,
           log: Callable[[str], None] = print) -> None:
    """Adds a W&B writer to rank 0's sink, names the run's inputs (its data pack, the checkpoint it
    resumed from) and, on a fresh start, logs a grid of augmented training images."""
    writer = start_run(config, layout, forwarded, log=log)
    if writer is None:
        return
    sink.add(writer)
    from animegan.data.shards import PackedSource

    if isinstance(source, PackedSource):
        writer.use_pack(source)
    if resumed_from is not None:
        writer.use_checkpoint(resumed_from)
    if start_step > 0:
        return
    try:
        from animegan.data.augment import Augmentation
        from animegan.data.preview import augmented_images
        from animegan.grids import image_grid

        images = augmented_images(source, items, PREVIEW_COUNT, seed=config.seed,
                                  augmentation=Augmentation(config.flip, config.rotation, config.shift))
        sink.log_image(0, PREVIEW_KEY, image_grid(images, columns=8),
                       caption=f"{len(images)} augmented training images, as the pipeline delivers them")
    except Exception as error:  # noqa: BLE001 (a preview is not worth a failed run)
        log(f"W&B: no data preview ({type(error).__name__}: {error})")
