"""Checkpoints: the whole training state in safe formats, validated before use.

A checkpoint directory holds Keras weights files (HDF5, no code), optimizer
slots as a NumPy archive read with `allow_pickle=False`, the fixed sample
noise, and `state.json` (step, data position, config, and the size and SHA-256
of every other file). A checkpoint counts only when every file matches its
entry in `state.json`, so a partly written or truncated one is never taken as
the latest, and a crash during an upload cannot poison a resume.

`state.json` is read from a shared workdir, so it is untrusted: every file name
it lists must be a plain name inside the checkpoint folder (see
`storage.relative_name_problem`), else the whole checkpoint is refused before
any of its files is fetched. Nothing in a checkpoint is ever executed or
unpickled.

Which checkpoint a run resumes from is decided once, on every byte (SHA-256),
by the driver (`choose`), and the workers load that one (`fetch_latest` with
`expected`). When a workdir holds checkpoints but none passes, the run is
refused (`NoUsableCheckpoint`) rather than started over from step 0, which
would cut the run's history out of metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from animegan import precision, storage
from animegan.config import TrainConfig, model_signature, saved_model_signature
from animegan.retries import call_with_retries

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


@contextlib.contextmanager
def written(state, *, step: int, epoch: int, skip_items: int, fixed_noise: np.ndarray,
            config: TrainConfig) -> Iterator[str]:
    """A temporary local folder holding the checkpoint, removed on leaving whether writing,
    uploading or reporting it succeeded or failed (a retried run would otherwise fill the disk)."""
    directory = tempfile.mkdtemp(prefix="animegan-save-")
    try:
        write_checkpoint(directory, state, step=step, epoch=epoch, skip_items=skip_items,
                         fixed_noise=fixed_noise, config=config)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def upload(local_dir: str, url: str, log=logger.warning) -> None:
    """Copies a written checkpoint to `url`, every file retried as reads are, state.json last.

    A reader never sees state.json before the files it lists, and a storage outage
    that a retry outlasts costs no restart. Then the sizes are checked (ensure_stored).
    """
    for name in sorted(os.listdir(local_dir), key=lambda name: name == STATE_FILE):
        target = storage.join(url, name)
        call_with_retries(lambda: storage.upload_file(os.path.join(local_dir, name), target),
                          what=f"uploading {target}", url=target)
    ensure_stored(local_dir, url, log)


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
            files[name] = {"bytes": os.path.getsize(path), "sha256": storage.sha256_of_file(path)}
    document = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "skip_items": int(skip_items),
        "model": model_signature(config),
        "config": storage.redacted(config.to_dict()),  # credentials in URLs stay out of storage
        "files": files,
    }
    with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)


class CorruptCheckpoint(ValueError):
    """A checkpoint that fails its checks: a damaged or hostile state.json, or bytes that do not match it."""


class NoUsableCheckpoint(ValueError):
    """A workdir holds checkpoints, but none passes its checks: resuming would silently start over."""


def read_state(url: str) -> dict[str, Any]:
    """The checkpoint's state.json, checked (CorruptCheckpoint if not); FileNotFoundError when it is missing."""
    try:
        document = json.loads(storage.read_text(storage.join(url, STATE_FILE)))
    except (ValueError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"{STATE_FILE} is unreadable") from None
    _check_state(document)
    return document


def _check_state(document: Any) -> None:
    """Raises CorruptCheckpoint unless state.json has the known format and lists only files inside the folder."""
    if not isinstance(document, dict):
        raise CorruptCheckpoint(f"{STATE_FILE} is not a JSON object")
    if document.get("format") != FORMAT_VERSION:
        raise CorruptCheckpoint(f"unknown checkpoint format {document.get('format')!r}")
    for key in ("step", "epoch", "skip_items"):
        value = document.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CorruptCheckpoint(f"{STATE_FILE} has no valid {key!r} ({value!r})")
    if not isinstance(document.get("config"), dict) or not isinstance(document.get("files"), dict):
        raise CorruptCheckpoint(f"{STATE_FILE} lacks its config or its list of files")
    for name, expected in document["files"].items():
        problem = storage.relative_name_problem(name, single=True)
        if problem is None and name == STATE_FILE:
            problem = "is state.json itself"
        if problem is not None:
            raise CorruptCheckpoint(f"{STATE_FILE} names the file {name!r}, which {problem}: refusing the checkpoint")
        size = expected.get("bytes") if isinstance(expected, dict) else None
        digest = expected.get("sha256") if isinstance(expected, dict) else None
        if (not isinstance(size, int) or isinstance(size, bool) or size < 0
                or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise CorruptCheckpoint(f"{STATE_FILE} has no valid size and SHA-256 for {name!r}")


def problem_with(url: str) -> str | None:
    """Why the checkpoint at `url` is not usable (cheap: names and sizes), or None."""
    try:
        document = read_state(url)
    except FileNotFoundError:
        return f"{STATE_FILE} is missing (the checkpoint was not finished)"
    except CorruptCheckpoint as error:
        return str(error)
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)  # sizes must come from storage, not from a listing cached before an upload
    for name, expected in document["files"].items():
        try:
            size = fs.info(f"{path.rstrip('/')}/{name}")["size"]
        except FileNotFoundError:
            return f"{name} is missing"
        if size != expected["bytes"]:
            return f"{name} is truncated ({size} of {expected['bytes']} bytes)"
    return None


def ensure_stored(local_dir: str, url: str, log=logger.warning) -> None:
    """Makes sure the checkpoint at `url` holds every file of `local_dir` whole, uploading it again if not.

    An upload can be reported done without being whole: pyarrow's `copy_files`
    (Ray's own uploader) does not report a file whose upload fails as the file is
    closed, and gcsfs sends small files at close. The checks are cheap (sizes); a
    checkpoint still broken after one more upload raises, so Ray restarts the
    workers from the newest whole checkpoint.
    """

    def check() -> str | None:
        return call_with_retries(lambda: problem_with(url), what=f"checking {url}", url=url)

    problem = check()
    if problem is None:
        return
    log(f"checkpoint {url} was not stored whole ({problem}); uploading it again")
    # state.json last, as when it was written: a reader never sees it before the files it lists.
    for name in sorted(os.listdir(local_dir), key=lambda name: name == STATE_FILE):
        target = storage.join(url, name)
        call_with_retries(lambda: storage.upload_file(os.path.join(local_dir, name), target),
                          what=f"uploading {target}", url=target)
    problem = check()
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


def choose(root: str, log=logger.warning) -> str | None:
    """The checkpoint a run resumes from: the newest under root whose every byte checks out.

    None when root holds no checkpoint at all; NoUsableCheckpoint when it holds
    some but every one fails. The bytes are read and hashed, not kept: the
    workers fetch the chosen checkpoint themselves (`fetch_latest`).
    """
    found = _newest_passing(root, log, take=_verify)
    return found[0] if found else None


def fetch_latest(root: str, log=logger.warning, *, expected: str | None = None) -> tuple[str, str] | None:
    """(url, verified local copy) of the newest checkpoint whose every byte checks out, or None.

    A checkpoint whose files have the right sizes but the wrong bytes (an upload
    overwritten half way) is passed over for the next older one, as a missing or
    truncated file is. `expected` is the driver's choice (`choose`): checkpoints
    older than it are never taken, so the workers resume from the checkpoint the
    driver announced, or from a newer one written by this run before a restart.
    None means there is no checkpoint to resume from; checkpoints that all fail
    raise NoUsableCheckpoint. The caller removes the local copy.
    """
    return _newest_passing(root, log, take=download, expected=expected)


def _newest_passing(root: str, log, take, expected: str | None = None) -> tuple[str, Any] | None:
    """(url, take(url)) for the newest checkpoint that passes the cheap checks and `take`'s."""
    expected_name = posixpath.basename(expected.rstrip("/")) if expected else None
    failures = []
    for _, url in list_checkpoints(root):
        name = posixpath.basename(url.rstrip("/"))
        if expected_name is not None and name < expected_name:  # zero-padded steps: names sort by step
            break
        problem = problem_with(url)
        if problem is None:
            try:
                return url, take(url)
            except (CorruptCheckpoint, FileNotFoundError) as error:
                problem = str(error)
        log(f"skipping checkpoint {url}: {problem}")
        failures.append(f"{name}: {problem}")
    if expected_name is not None:
        raise NoUsableCheckpoint(
            f"the checkpoint the run was to resume from, {expected}, and every newer one in {root} now fail "
            f"their checks ({'; '.join(failures) or f'{expected_name} is gone'}); run the same command again "
            f"to choose afresh")
    if failures:
        raise NoUsableCheckpoint(
            f"every checkpoint in {root} fails its checks ({'; '.join(failures)}); refusing to start over "
            f"from step 0 over the run's history. Repair or remove them, or run again with --restart to start "
            f"over (the previous run is kept under <workdir>/archive/)")
    return None


def _verify(url: str) -> None:
    """Raises CorruptCheckpoint unless every file's bytes match the SHA-256 in state.json (streamed, not kept)."""
    document = read_state(url)
    fs, path = storage.filesystem(url)
    for name, expected in document["files"].items():
        digest = hashlib.sha256()
        with fs.open(f"{path.rstrip('/')}/{name}", "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected["sha256"]:
            raise CorruptCheckpoint(f"{name} does not match its checksum in {STATE_FILE}")


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
            if storage.sha256_of_file(target) != expected["sha256"]:
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
