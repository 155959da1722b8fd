"""The driver: resolves a run, starts or joins Ray, and runs the training job through TensorflowTrainer.

Everything that can be checked before Ray starts is checked here, so a bad
flag or an empty bucket costs a second, not a cluster start.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from animegan import cluster, preemption, storage
from animegan.config import TrainConfig
from animegan.data.demo import DEMO_COUNT, demo_archive_name, ensure_demo_archive
from animegan.data.index import DataIndex, index_for
from animegan.data.sources import list_images, open_source
from animegan.metrics.during_training import check_evaluation
from animegan.resume import prepare_workdir
from animegan.training import steps_per_epoch
from animegan.workdir import RunLayout

DEFAULT_STEPS = 1200


@dataclass(frozen=True)
class TrainOutcome:
    status: str  # "finished" or "diverged"
    step: int
    metrics: dict[str, Any]
    layout: RunLayout


def default_workdir() -> str:
    return os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def resolve(config: TrainConfig, *, write: bool = True, restart: bool = False, on_cluster: bool = False,
            log=print) -> tuple[TrainConfig, DataIndex, str | None]:
    """Fills in the workdir, data and length; lists the data once. Writes nothing when write=False.

    Also returns the checkpoint the run resumes from (None: from step 0), verified on every byte;
    pass it to build_trainer, so the workers resume from the same one.

    restart=True sets the workdir's previous run aside (animegan/archive.py) instead of resuming it.
    on_cluster=True (the run joins a Ray cluster) gives each worker one CPU unless --cpus-per-worker
    says otherwise: this machine's cores say nothing about the nodes the workers run on.
    """
    config.validate()
    workdir = storage.absolute(config.workdir or default_workdir())
    layout = RunLayout(workdir)
    resume_from = prepare_workdir(config, layout, restart=restart, write=write, log=log)

    if config.data is None:
        if write:
            storage.makedirs(workdir)
            data = ensure_demo_archive(workdir)
        else:
            data = storage.join(workdir, demo_archive_name())
        log(f"No --data given: training on the built-in demo set of {DEMO_COUNT} procedurally drawn "
            f"cartoon faces ({data}).\nTo train on real images: --data /path/to/archive.zip, a folder, "
            f"or gs://bucket/prefix.")
    else:
        data = storage.absolute(config.data)

    if write:
        index = index_for(data, layout.data_index, config.holdout_fraction, config.seed)
    elif config.data is None:
        index = DataIndex.split(data, [f"demo-{i}" for i in range(DEMO_COUNT)], config.holdout_fraction, config.seed)
    else:
        index = DataIndex.split(data, list_images(open_source(data)), config.holdout_fraction, config.seed)

    config = config.replace(workdir=workdir, data=config.data and data)
    if config.cpus_per_worker == 0:
        # Local default: share this machine's cores between the workers.
        local_share = max(1, (os.cpu_count() or 1) // config.workers)
        config = config.replace(cpus_per_worker=1.0 if on_cluster else float(local_share))
    per_epoch = steps_per_epoch(len(index.items), config)
    if config.epochs is not None:
        # The resolved config holds the length in steps only, so it reproduces the run exactly.
        steps = max(1, math.ceil(config.epochs * per_epoch))
        log(f"{config.epochs:g} epochs of {len(index.items)} images = {steps} steps of {config.batch_size}")
        config = config.replace(steps=steps, epochs=None)
    elif config.steps is None:
        config = config.replace(steps=DEFAULT_STEPS)
    if len(index.items) // config.workers < config.batch_size // config.workers:
        raise ValueError(f"{len(index.items)} images at {data} cannot fill one batch of {config.batch_size} "
                         f"split over {config.workers} workers; use a smaller --batch-size")
    config.validate()
    check_evaluation(config, index, log)  # weights findable before Ray starts, when --eval-every is on
    if write:
        # Credentials in URLs (--data https://user:pass@..., signed URLs) stay out of the workdir.
        storage.write_text(layout.config, json.dumps(storage.redacted(config.to_dict()), indent=2) + "\n")
    return config, index, resume_from


def finished_outcome(config: TrainConfig, layout: RunLayout) -> TrainOutcome | None:
    """The outcome of the workdir's run if it already trained `config.steps` steps and exported; else None."""
    if not (storage.exists(layout.status) and storage.exists(layout.generator_info)):
        return None
    ended = json.loads(storage.read_text(layout.status))
    exported = json.loads(storage.read_text(layout.generator_info))
    # Rank 0 exports, then writes status.json: both name the step of a run that reached its end.
    if ended["status"] != "finished" or int(ended["step"]) < config.steps or exported["step"] != ended["step"]:
        return None
    return TrainOutcome(status="finished", step=int(ended["step"]), metrics=ended["metrics"], layout=layout)


def build_trainer(config: TrainConfig, layout: RunLayout, run_config_extras: dict | None = None,
                  startup_marks: list | None = None, resume_from: str | None = None, report_every: int = 0,
                  stop_notice=None):
    """The TensorflowTrainer for a resolved config (also used by the tuning trials).

    `resume_from` is resolve()'s choice of checkpoint: rank 0 loads it (or a newer one written by
    this run before a restart), never an older one. `report_every` > 0 (a sweep's trials) makes the
    workers report to Ray every that many steps, for Tune's schedulers. `stop_notice` (preemption.py)
    lets the driver ask the workers to checkpoint their step and stop.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from animegan.tf_backend import MultiWorkerConfig
    from animegan.tracking import driver_environment
    from animegan.training import train_loop_per_worker
    from animegan.watchdog import ray_settings
    from animegan.workdir import CHECKPOINTS

    # Ray Train's controller takes its barrier timeout from the driver's environment when fit() starts it.
    os.environ.update(ray_settings(config.collective_timeout))
    storage_filesystem, storage_path = storage.pyarrow_filesystem(layout.workdir)
    resources = {"CPU": config.cpus_per_worker}
    if config.gpus_per_worker:
        resources["GPU"] = config.gpus_per_worker
    return TensorflowTrainer(
        train_loop_per_worker,
        # The driver's W&B settings (never the API key) ride along to rank 0.
        train_loop_config={"config": config.to_dict(), "workdir": layout.workdir, "resume_from": resume_from,
                           "wandb_env": driver_environment(), "startup": startup_marks or [],
                           "report_every": report_every, "stop_notice": stop_notice},
        # TF_CONFIG for MultiWorkerMirroredStrategy, without TensorFlow in Ray Train's controller.
        tensorflow_config=MultiWorkerConfig(),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=CHECKPOINTS,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=FailureConfig(max_failures=config.max_failures),
            # The driver's storage and data settings (ANIMEGAN_*, GCSFS_*, ...) as they are now,
            # for this run's workers, whether Ray was started here or joined by address.
            **{"worker_runtime_env": {"env_vars": cluster.worker_env()}, **(run_config_extras or {})},
        ),
    )


def _redacting(log):
    """`log`, with the credentials of any URL in its messages (--data https://user:pass@...) redacted."""
    return lambda message: log(storage.redact(str(message)))


def run_training(config: TrainConfig, *, address: str | None = None, restart: bool = False,
                 wait_for_workdir: float = 0.0, log=print) -> TrainOutcome:
    """Runs (or resumes; with restart=True, starts over) a training job and says where its results are.

    The run holds the workdir's lease (animegan/lease.py) from before it writes or
    moves anything there until it ends: a second run on a live workdir is refused, or
    waited for up to `wait_for_workdir` seconds (a retried job whose first attempt died).
    """
    from animegan.lease import held

    config = config.replace(workdir=storage.absolute(config.workdir or default_workdir()))
    with held(config.workdir, log=log, wait_seconds=wait_for_workdir):
        return _run_training(config, address=address, restart=restart, log=log)


def _run_training(config: TrainConfig, *, address: str | None, restart: bool, log) -> TrainOutcome:
    import ray

    from animegan.startup import StartupClock

    log = _redacting(log)
    clock = StartupClock.for_run()
    config, _, resume_from = resolve(config, restart=restart, on_cluster=cluster.cluster_address(address) is not None,
                                     log=log)
    clock.mark("resolve")
    layout = RunLayout(config.workdir)
    log(f"Workdir: {layout.workdir}")
    done = finished_outcome(config, layout)
    if done is not None:
        # The same command run again after it finished: nothing for a cluster to do.
        log(f"Nothing to train: this workdir's run finished at step {done.step} and exported its generator "
            f"(--steps {config.steps}). Raise --steps to train on, or --restart to start over.")
        return done
    started = cluster.connect(address, log)
    try:
        cluster.check_resources(config)
        clock.mark("ray start")
        # A status left by an earlier attempt must not be mistaken for this one's.
        storage.remove(layout.status)
        # fit() raises if training fails. Its Result carries the metrics of the latest checkpoint,
        # not of the last report, so rank 0 records how the run ended in status.json.
        notice = preemption.create_notice()
        with preemption.sigterm_stops_training(notice, log):
            build_trainer(config, layout, startup_marks=clock.marks, resume_from=resume_from,
                          stop_notice=notice).fit()
    finally:
        if started:
            ray.shutdown()
    ended = json.loads(storage.read_text(layout.status))
    outcome = TrainOutcome(status=ended["status"], step=int(ended["step"]), metrics=ended["metrics"],
                           layout=layout)
    if outcome.status == preemption.PREEMPTED:
        print(f"animegan: stopped at step {outcome.step} as asked (SIGTERM), with a checkpoint of that step in "
              f"{layout.checkpoints}; run the same command again to resume at step {outcome.step + 1}",
              file=sys.stderr)
        return outcome
    if outcome.status == "diverged":
        print(f"animegan: training stopped at step {outcome.step}: a loss became NaN or infinite. "
              f"The latest good checkpoint is in {layout.checkpoints}; lower --lr and resume.", file=sys.stderr)
        return outcome
    log(f"Done: {outcome.step} steps.\n  samples:     {layout.samples}\n  metrics:     {layout.metrics}\n"
        f"  checkpoints: {layout.checkpoints}\n  generator:   {layout.generator}")
    return outcome
