"""Before a run resumes: can this config continue what the workdir holds, and from where?

The driver checks this before Ray starts, so a mismatch costs a second, not a
cluster start plus `--max-failures` doomed retries, and the user sees at once
which checkpoint the job will continue from and why newer ones are passed over.
The decision is made on every byte (SHA-256), and it is the workers' too: they
are given it and load that checkpoint (or a newer one their own run wrote), so
the checkpoint announced here is the one training continues from. A workdir
whose checkpoints all fail their checks is refused, never silently started over.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Callable, Iterator

from animegan import storage
from animegan.archive import archive_run, finish_interrupted
from animegan.checkpoint import check_compatible, choose, read_state
from animegan.config import TrainConfig
from animegan.data.demo import demo_archive_name
from animegan.workdir import RunLayout

# Ray Train's record of the checkpoints it reported (written next to them, under <workdir>/checkpoints).
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def prepare_workdir(config: TrainConfig, layout: RunLayout, *, restart: bool = False, write: bool = True,
                    log: Callable[[str], None] = print) -> str | None:
    """Before a run starts: set the previous run aside (restart), or check that this config can continue it.

    Returns the checkpoint the run resumes from (None: it starts at step 0).
    """
    if restart:
        if write:
            archive_run(layout.workdir, keep=_inputs_inside(layout.workdir, config.data), log=log)
        else:
            log(f"--restart: the previous run in {layout.workdir}, if any, would move to {layout.archive}/<time>/")
        return None
    if write:
        finish_interrupted(layout.workdir, log)
    latest = check_resumable(config, layout, log)
    if write:
        set_aside_stale_ray_snapshot(layout, latest, log)
    return latest


def _inputs_inside(workdir: str, data: str | None) -> list[str]:
    """Workdir entries that are training data, not run output: --restart leaves them in place."""
    inputs = [demo_archive_name()]
    prefix = workdir.rstrip("/") + "/"
    if data is not None and storage.absolute(data).startswith(prefix):
        inputs.append(storage.absolute(data)[len(prefix):].split("/", 1)[0])
    return inputs


def check_resumable(config: TrainConfig, layout: RunLayout, log: Callable[[str], None] = print) -> str | None:
    """Raises ValueError if the workdir's run has another model shape; returns the checkpoint to resume from.

    Both the workdir's config.json and the checkpoint itself are compared, so a
    lost or edited config.json cannot let an incompatible checkpoint through.
    Checkpoints that all fail their checks raise NoUsableCheckpoint (a ValueError).
    """
    if storage.exists(layout.config):
        check_compatible(json.loads(storage.read_text(layout.config)), config, layout.workdir)
    latest = choose(layout.checkpoints, log=log)
    if latest is None:
        return None
    state = read_state(latest)
    check_compatible(state["config"], config, latest)
    log(f"Resuming from {latest} (step {state['step']})")
    return latest


def set_aside_stale_ray_snapshot(layout: RunLayout, resume_from: str | None,
                                 log: Callable[[str], None] = print) -> bool:
    """Renames Ray's checkpoint record aside when Ray would refuse it or it would mislead Ray.

    Ray Train refuses to resume a run whose record names a checkpoint folder that
    is gone (deleted by hand, or by a bucket lifecycle rule) or was written by
    another Ray version. And when training resumes from an older checkpoint than
    the newest one recorded (the newer ones are broken), the run writes those
    folders again; Ray would then count each twice and, pruning the first entry,
    delete the folder the second one needs. animegan does not need the record to
    resume (it lists the checkpoints itself), so the record is moved aside, not
    deleted; the only cost is that Ray no longer prunes the checkpoints it listed.
    """
    snapshot_url = storage.join(layout.checkpoints, RAY_SNAPSHOT)
    if not storage.exists(snapshot_url):
        return False
    try:
        snapshot = json.loads(storage.read_text(snapshot_url))
    except ValueError:
        reason = "it is unreadable"
    else:
        reason = _why_stale(snapshot, layout, resume_from)
    if reason is None:
        return False
    earlier = [name for name in storage.list_dir(layout.checkpoints) if name.startswith(RAY_SNAPSHOT + ".stale")]
    aside = f"{snapshot_url}.stale-{len(earlier) + 1}"
    storage.move(snapshot_url, aside)
    log(f"Ray's checkpoint record {snapshot_url} was moved to {aside}: {reason}. Training resumes from "
        f"the newest valid checkpoint as usual; older checkpoints are no longer pruned automatically.")
    return True


def _why_stale(snapshot: dict[str, Any], layout: RunLayout, resume_from: str | None) -> str | None:
    import ray

    saved_version = snapshot.get("ray_version")
    if saved_version != ray.__version__:
        return f"it was written by Ray {saved_version}, this is Ray {ray.__version__}"
    names = set(_checkpoint_names(snapshot))
    present = set(storage.list_dir(layout.checkpoints))
    missing = sorted(names - present)
    if missing:
        return f"it names checkpoint folders that no longer exist ({', '.join(missing)})"
    resume_name = posixpath.basename(resume_from.rstrip("/")) if resume_from else ""
    # Checkpoint folder names sort by step (zero-padded), so newer means greater.
    unusable = sorted(name for name in names if name > resume_name)
    if unusable:
        return f"it names checkpoints newer than the one training resumes from ({', '.join(unusable)})"
    return None


def _checkpoint_names(value: Any) -> Iterator[str]:
    """Every `checkpoint_dir_name` anywhere in the record (its layout varies between Ray versions)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "checkpoint_dir_name" and isinstance(item, str):
                yield item
            else:
                yield from _checkpoint_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from _checkpoint_names(item)
