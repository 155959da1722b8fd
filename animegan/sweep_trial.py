"""One trial of a sweep, in its Tune actor: an ordinary (resumable) training run in <sweep>/trials/<trial>.

The trial builds the run's TensorflowTrainer (launcher.build_trainer) and runs
fit() on a thread of its own. `TrialReports`, a callback in Ray Train's
controller, hands every report of the workers to the trial's thread, which
passes it on with `ray.tune.report`: the schedulers see the numbers of
metrics.jsonl and W&B, `images_seen` included, every --report-every-images.
(Ray's own TuneReportCallback passes metrics only, so Tune would hold no
checkpoint of any trial, and PBT moves checkpoints.)

Under PBT every report carries the trial's checkpoint, and Tune keeps a copy in
its experiment (tune/<trial>/checkpoint_*): those copies are what PBT hands from
trial to trial. A trial started with a checkpoint (`ray.tune.get_checkpoint()`):

- that it already holds (its own, after PBT paused it or the sweep was
  restored): it resumes from its newest checkpoint, as any run does;
- of another trial (PBT's exploit): its run so far moves to archive/ (as
  `train --restart` does), the checkpoint is copied into its checkpoints/
  through animegan's own format (every file checked against state.json), and
  the run resumes from it, at that checkpoint's step, with the trial's new values.

Tune's copy is read from the sweep's own workdir: its path must lie under tune/.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import threading
from typing import Any, Callable, Mapping

from ray.train.v2.api.callback import UserCallback

from animegan import checkpoint as checkpoints
from animegan import storage
from animegan.archive import archive_run
from animegan.config import TrainConfig
from animegan.data.index import DataIndex
from animegan.training import images_seen
from animegan.tuning import TUNE_FOLDER, SweepPlan, trial_name
from animegan.workdir import RunLayout


def run_trial(sampled: dict[str, Any], plan: SweepPlan) -> None:
    """One trial: train (or resume) the trial's run, reporting to Tune; see the module docstring."""
    import ray.tune

    from animegan.launcher import build_trainer, resolve

    trial = trial_name(ray.tune.get_context().get_trial_id())
    config = plan.trial_config(sampled, trial)
    layout = RunLayout(config.workdir)
    values = ", ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                       for name, value in sampled.items())
    print(f"{trial}: {values or 'the base config'} -> {layout.workdir}")
    given = ray.tune.get_checkpoint()
    if given is not None:
        adopt_checkpoint(tune_checkpoint_url(plan, given.path), layout, trial, log=print)
    check_same_trial(config, layout, sampled)
    if report_finished_run(config, layout):
        return
    if not storage.exists(layout.data_index):
        # The sweep's listing, split by this trial's seed and holdout fraction: resolve() finds it and lists nothing.
        listing = DataIndex.load(plan.data_index, source=plan.base["data"])
        DataIndex.split(listing.source, listing.items, config.holdout_fraction, config.seed).save(layout.data_index)
    config, _, resume_from = resolve(config, log=print)
    storage.remove(layout.status)  # a status left by an earlier attempt is not this one's
    report_while_training(
        lambda callback: build_trainer(config, layout, {"callbacks": [callback]}, resume_from=resume_from,
                                       report_every=plan.report_steps(config.batch_size)),
        layout, with_checkpoints=plan.scheduler == "pbt")


# ------------------------------------------------------------------ reports: Ray Train -> the trial -> Tune

class TrialReports(UserCallback):
    """In Ray Train's controller: puts each report (rank 0's metrics, the checkpoint's folder name) on a queue."""

    def __init__(self, queue):
        self._queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        name = posixpath.basename(checkpoint.path.rstrip("/")) if checkpoint is not None else None
        # Blocks while the trial has not passed on the previous report: Tune sees every one, in order.
        self._queue.put((dict(metrics[0]), name))


def report_while_training(trainer_for: Callable[[TrialReports], Any], layout: RunLayout, *,
                          with_checkpoints: bool) -> None:
    """Runs the trainer's fit() on a thread and passes its reports to Tune from this one, the trial's own.

    `with_checkpoints` attaches the run's checkpoint to the reports that have one (Tune copies it).
    Raises what fit() raised, after the reports before the failure have reached Tune.
    """
    import ray.tune
    from ray.util.queue import Queue

    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = trainer_for(TrialReports(reports))
    failures: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # raised again on the trial's thread, where Tune sees it
            failures.append(error)
        finally:
            reports.put(None)

    thread = threading.Thread(target=fit, name="animegan-trial-fit", daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not None:
            metrics, name = item
            checkpoint = None
            if with_checkpoints and name is not None:
                filesystem, path = storage.pyarrow_filesystem(storage.join(layout.checkpoints, name))
                checkpoint = ray.tune.Checkpoint(path=path, filesystem=filesystem)
            ray.tune.report(metrics, checkpoint=checkpoint)
        thread.join()
    finally:
        reports.shutdown()
    if failures:
        raise failures[0]


# ------------------------------------------------------------------ starting from a checkpoint Tune gives

def tune_checkpoint_url(plan: SweepPlan, path: str) -> str:
    """The URL of a checkpoint Tune gave the trial (a path of the sweep's filesystem), checked to lie in tune/."""
    _, root = storage.pyarrow_filesystem(plan.workdir)
    prefix = posixpath.join(root, TUNE_FOLDER) + "/"
    if not path.startswith(prefix):
        raise ValueError(f"Tune gave the trial the checkpoint {path}, which is outside the sweep's {prefix}")
    relative = storage.check_relative_name(path[len(root):].strip("/"), "Tune's checkpoint")
    return storage.join(plan.workdir, relative)


def adopt_checkpoint(url: str, layout: RunLayout, trial: str, log: Callable[[str], None] = print) -> bool:
    """Makes the trial's run continue from the checkpoint at `url`; False when it already does (its own).

    Another trial's checkpoint replaces the trial's run: the run so far moves to archive/, the
    checkpoint is copied (verified) into checkpoints/, and resolve() then resumes from it.
    """
    state = checkpoints.read_state(url)
    own = storage.join(layout.checkpoints, checkpoints.checkpoint_dir_name(state["step"]))
    writer = state["config"].get("workdir")
    if writer == layout.workdir or _holds(own, state):
        return False  # this run's own, or a copy it made before: its newest checkpoint is at least as new
    log(f"{trial}: PBT exploit: continuing from {writer}'s checkpoint at step {state['step']}; this trial's run "
        f"so far moves to {layout.archive}/")
    archive_run(layout.workdir, log=log, reason="PBT exploit")
    local = checkpoints.download(url)  # every file checked against state.json
    try:
        checkpoints.upload(local, own, log=log)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return True


def _holds(url: str, state: Mapping[str, Any]) -> bool:
    """Whether the checkpoint at `url` has exactly the files (sizes and SHA-256) that `state` lists."""
    try:
        return checkpoints.read_state(url)["files"] == state["files"]
    except (FileNotFoundError, checkpoints.CorruptCheckpoint):
        return False


# ------------------------------------------------------------------ a trial that already ran

def check_same_trial(config: TrainConfig, layout: RunLayout, sampled: Mapping[str, Any]) -> None:
    """A trial workdir written with other sampled values is not this trial's to continue."""
    if not storage.exists(layout.config):
        return
    stored = json.loads(storage.read_text(layout.config))
    different = [f"{name} {stored.get(name)!r} there, {getattr(config, name)!r} here"
                 for name in sampled if stored.get(name) != getattr(config, name)]
    if different:
        raise ValueError(f"{layout.workdir} holds a run with other hyperparameters ({'; '.join(different)}); "
                         f"move it away to run this trial")


def report_finished_run(config: TrainConfig, layout: RunLayout) -> bool:
    """Reports the outcome of a run that already ended, instead of training again; False if it has not.

    Tune records finished trials every few seconds; a sweep killed in between restores such a
    trial as unfinished. Its workdir knows better: the run is done and stays untouched.
    """
    import ray.tune

    from animegan.metrics.during_training import latest_evaluation

    if not storage.exists(layout.status):
        return False
    ended = json.loads(storage.read_text(layout.status))
    if ended["status"] not in ("finished", "diverged") or (ended["status"] == "finished"
                                                           and ended["step"] < config.steps):
        return False  # preempted, or finished short of this trial's length: it trains on
    print(f"{layout.workdir} already {ended['status']} at step {ended['step']}: reporting it, not training again")
    ray.tune.report({**ended["metrics"], **latest_evaluation(layout.metrics, ended["step"]),
                     "step": ended["step"], "images_seen": images_seen(ended["step"], config),
                     "status": ended["status"]})
    return True
