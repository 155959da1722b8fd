"""Checkpoints: the whole training state in safe formats, validated before use.

A checkpoint directory holds Keras weights files (HDF5, no code), optimizer
slots as a NumPy archive read with `allow_pickle=False`, the fixed sample
noise, and `state.json` (step, data position, config, and the size and SHA-256
of every other file). A checkpoint counts only when every file matches its
entry in `state.json`, so a partly written or truncated one is never taken as
the latest: loading a checkpoint from a shared bucket cannot run code, and a
crash during an upload cannot poison a resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from animegan import precision, storage
from animegan.config import TrainConfig, model_signature, saved_model_signature

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_FILE = "state.json"
_MODEL_FILES = {
    "generator": "generator.weights.h5",
    "discriminator": "discriminator.weights.h5",
    "ema_generator": "ema_generator.weights.h5",
}
_OPTIMIZER_FILE = "optimizers.npz"
_NOISE_FILE = "fixed_noise.npy"
_NAME_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


@dataclass(frozen=True)
class CheckpointInfo:
    url: str
    step: int
    epoch: int
    skip_items: int
    config: dict[str, Any]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(directory: str, state, *, step: int, epoch: int, skip_items: int,
                     fixed_noise: np.ndarray, config: TrainConfig) -> None:
    """Writes the state into a local directory; state.json goes last and lists the rest."""
    os.makedirs(directory, exist_ok=True)
    state.generator.save_weights(os.path.join(directory, _MODEL_FILES["generator"]))
    state.discriminator.save_weights(os.path.join(directory, _MODEL_FILES["discriminator"]))
    state.ema_generator.save_weights(os.path.join(directory, _MODEL_FILES["ema_generator"]))
    arrays = {}
    for prefix, optimizer in [("generator", state.generator_optimizer),
                              ("discriminator", state.discriminator_optimizer)]:
        # The Adam slots are the same whatever the precision, so a run can resume in another one.
        for index, variable in enumerate(precision.inner_optimizer(optimizer).variables):
            arrays[f"{prefix}/{index:04d}"] = np.asarray(variable.numpy())
        for index, variable in enumerate(precision.loss_scale_variables(optimizer)):
            arrays[f"{prefix}_loss_scale/{index}"] = np.asarray(variable.numpy())
    np.savez(os.path.join(directory, _OPTIMIZER_FILE), **arrays)
    np.save(os.path.join(directory, _NOISE_FILE), np.asarray(fixed_noise, np.float32), allow_pickle=False)

    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name != STATE_FILE and os.path.isfile(path):
            files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    document = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "skip_items": int(skip_items),
        "model": model_signature(config),
        "config": config.to_dict(),
        "files": files,
    }
    with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)


def read_state(url: str) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(url, STATE_FILE)))


def problem_with(url: str) -> str | None:
    """Why the checkpoint at `url` is not usable (cheap: names and sizes), or None."""
    try:
        document = read_state(url)
    except FileNotFoundError:
        return f"{STATE_FILE} is missing (the checkpoint was not finished)"
    except (ValueError, UnicodeDecodeError):
        return f"{STATE_FILE} is unreadable"
    if document.get("format") != FORMAT_VERSION:
        return f"unknown checkpoint format {document.get('format')!r}"
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)  # sizes must come from storage, not from a listing cached before an upload
    for name, expected in document.get("files", {}).items():
        try:
            size = fs.info(f"{path.rstrip('/')}/{name}")["size"]
        except FileNotFoundError:
            return f"{name} is missing"
        if size != expected["bytes"]:
            return f"{name} is truncated ({size} of {expected['bytes']} bytes)"
    return None


class CorruptCheckpoint(ValueError):
    """A checkpoint file's bytes do not match the checksum in its state.json."""


def ensure_stored(local_dir: str, url: str, log=logger.warning) -> None:
    """Makes sure the checkpoint at `url` holds every file of `local_dir` whole, uploading it again if not.

    Ray uploads checkpoints with pyarrow's `copy_files`, which does not report a
    file whose upload fails as the file is closed, and gcsfs sends small files at
    close: after a storage outage Ray can call a checkpoint saved that lacks files.
    The checks are cheap (sizes); a checkpoint still broken after one more upload
    raises, so Ray restarts the workers from the newest whole checkpoint.
    """
    problem = problem_with(url)
    if problem is None:
        return
    log(f"checkpoint {url} was not stored whole ({problem}); uploading it again")
    # state.json last, as when it was written: a reader never sees it before the files it lists.
    for name in sorted(os.listdir(local_dir), key=lambda name: name == STATE_FILE):
        storage.upload_file(os.path.join(local_dir, name), storage.join(url, name))
    problem = problem_with(url)
    if problem is not None:
        raise OSError(f"checkpoint {url} could not be stored whole: {problem}")


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, url) of every checkpoint directory under root, newest first."""
    found = []
    for name in storage.list_dir(root):
        match = _NAME_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), storage.join(root, name)))
    return sorted(found, reverse=True)


def usable_checkpoints(root: str, log=logger.warning) -> Iterator[str]:
    """Checkpoints under root that pass the cheap checks, newest first, saying why others are passed over."""
    for _, url in list_checkpoints(root):
        problem = problem_with(url)
        if problem is None:
            yield url
        else:
            log(f"skipping checkpoint {url}: {problem}")


def latest_valid(root: str, log=logger.warning) -> str | None:
    """The newest checkpoint under root that passes the cheap checks, saying why others were passed over."""
    return next(usable_checkpoints(root, log), None)


def fetch_latest(root: str, log=logger.warning) -> tuple[str, str] | None:
    """(url, verified local copy) of the newest checkpoint whose every byte checks out, or None.

    A checkpoint whose files have the right sizes but the wrong bytes (an upload
    overwritten half way) is passed over for the next older one, as a missing or
    truncated file is. The caller removes the local copy.
    """
    for url in usable_checkpoints(root, log):
        try:
            return url, download(url)
        except (CorruptCheckpoint, FileNotFoundError) as error:
            log(f"skipping checkpoint {url}: {error}")
    return None


def download(url: str) -> str:
    """A local directory with the checkpoint's files, verified against their SHA-256 sums."""
    document = read_state(url)
    local = tempfile.mkdtemp(prefix="animegan-checkpoint-")
    try:
        for name, expected in document["files"].items():
            target = os.path.join(local, name)
            if storage.is_local(url):
                shutil.copyfile(storage.join(url, name), target)
            else:
                fs, path = storage.filesystem(url)
                fs.get_file(f"{path.rstrip('/')}/{name}", target)
            if _sha256(target) != expected["sha256"]:
                raise CorruptCheckpoint(f"{name} does not match its checksum in {STATE_FILE}")
        with open(os.path.join(local, STATE_FILE), "w", encoding="utf-8") as file:
            json.dump(document, file)
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local


def check_compatible(saved_config: dict[str, Any], config: TrainConfig, where: str) -> None:
    """Raises ValueError naming every model-shape field that differs from the checkpoint's."""
    current = model_signature(config)
    saved = saved_model_signature(saved_config)
    differing = [f"{key}: checkpoint has {saved[key]}, this run has {current[key]}"
                 for key in current if saved[key] != current[key]]
    if differing:
        raise ValueError(
            f"the checkpoint at {where} was trained with a different model shape ("
            + "; ".join(differing)
            + "); use the same settings to resume, --restart to start over in this workdir "
            "(the old run is kept under archive/), or a new --workdir"
        )


def restore(local_dir: str, state, config: TrainConfig, source: str | None = None) -> CheckpointInfo:
    """Loads a verified local checkpoint into `state` (inside the strategy scope); returns its position.

    `source` is the URL the local copy came from, for messages.
    """
    with open(os.path.join(local_dir, STATE_FILE), encoding="utf-8") as file:
        document = json.load(file)
    check_compatible(document["config"], config, source or local_dir)
    state.generator.load_weights(os.path.join(local_dir, _MODEL_FILES["generator"]))
    state.discriminator.load_weights(os.path.join(local_dir, _MODEL_FILES["discriminator"]))
    state.ema_generator.load_weights(os.path.join(local_dir, _MODEL_FILES["ema_generator"]))
    with np.load(os.path.join(local_dir, _OPTIMIZER_FILE), allow_pickle=False) as arrays:
        for prefix, optimizer in [("generator", state.generator_optimizer),
                                  ("discriminator", state.discriminator_optimizer)]:
            for index, variable in enumerate(precision.loss_scale_variables(optimizer)):
                if f"{prefix}_loss_scale/{index}" in arrays:  # else float16 starts from the initial scale
                    variable.assign(arrays[f"{prefix}_loss_scale/{index}"])
            for index, variable in enumerate(precision.inner_optimizer(optimizer).variables):
                if variable.path.endswith("/learning_rate"):
                    continue  # the learning rate comes from this run's config, so --lr can change on resume
                value = arrays[f"{prefix}/{index:04d}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(f"optimizer slot {prefix}/{index} has shape {value.shape}, "
                                     f"expected {tuple(variable.shape)}")
                variable.assign(value)
    state.step.assign(document["step"])
    return CheckpointInfo(url=local_dir, step=document["step"], epoch=document["epoch"],
                          skip_items=document["skip_items"], config=document["config"])


def load_fixed_noise(local_dir: str) -> np.ndarray:
    return np.load(os.path.join(local_dir, _NOISE_FILE), allow_pickle=False)
