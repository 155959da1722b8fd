"""Hyperparameter sweeps with Ray Tune: every trial is an ordinary training run under the sweep's workdir.

    animegan tune --workdir sweeps/faces --data gs://BUCKET/faces --trials 16 --max-steps 2000 \
        --holdout-fraction 0.05 --eval-samples 500

A sweep's workdir:

    sweep.json          what the sweep is (base config, search space, objective); a rerun must match it
    data-index.json     the data, listed once for every trial (the demo set, too, is drawn once)
    tune/               Ray Tune's experiment, which a rerun of the same command restores
    trials/trial-0000/  one training workdir per trial: config.json, metrics.jsonl, checkpoints, ...
    trials.csv, trials.json, best-config.json, best-generator.keras, best-generator/  (sweep_report.py)

Each trial is a Tune function trainable that builds the run's TensorflowTrainer
(launcher.build_trainer) and calls fit(); `TuneReportCallback` in the trainer's
run config passes every `ray.train.report` of the workers on to Tune, so ASHA
sees the same numbers as metrics.jsonl and W&B. The trial's own process holds no
CPU: its workers get all the trial's resources, and trials are admitted only as
many at a time as the cluster can host, so no trial waits for workers that
other trials' drivers sit on.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import posixpath
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from animegan import cluster, storage
from animegan.config import TrainConfig
from animegan.data.demo import DEMO_COUNT, demo_archive_name, ensure_demo_archive
from animegan.data.index import DataIndex, index_for
from animegan.data.sources import list_images, open_source
from animegan.launcher import DEFAULT_STEPS
from animegan.metrics.features import locate_weights
from animegan.search_space import SearchSpace, build_space
from animegan.tracking import run_name
from animegan.workdir import RunLayout

SWEEP_FILE = "sweep.json"
TUNE_FOLDER = "tune"
TRIALS_FOLDER = "trials"
# Unless --checkpoint-every is given, a trial checkpoints (and so reports to Tune) this many times:
# ASHA can only compare trials at reports.
REPORTS_PER_TRIAL = 4
# What trials report that a sweep can optimise: gan.STEP_METRICS and the evaluation's scores
# (named here so that the driver never imports TensorFlow).
OBJECTIVES = ("eval/fid", "eval/kid", "loss/d", "loss/g", "d/real", "d/fake")
SCHEDULERS = ("asha", "fifo")
ASHA_REDUCTION_FACTOR = 3
# Tune cannot give a trial no resources at all; a byte of memory is nothing, and it keeps
# the trial's driver off the CPUs and GPUs its workers need (Ray Train's controller takes none either).
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 1}


@dataclass(frozen=True)
class SweepSettings:
    """What the user asked of the sweep, apart from the base training config."""

    trials: int
    max_steps: int | None = None
    concurrent: int | None = None
    metric: str = "eval/fid"
    mode: str = "min"
    scheduler: str = "asha"
    grace_steps: int | None = None
    separate_lr: bool = False
    search_space: str | None = None  # a YAML/JSON file (search_space.py)

    def validate(self) -> "SweepSettings":
        if self.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {self.trials}")
        for flag, value in (("--max-steps", self.max_steps), ("--concurrent", self.concurrent),
                            ("--grace-steps", self.grace_steps)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.metric not in OBJECTIVES:
            raise ValueError(f"--metric {self.metric!r} is not something trials report; use one of "
                             f"{', '.join(OBJECTIVES)}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"--mode must be min or max, got {self.mode!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        return self


@dataclass(frozen=True)
class SweepPlan:
    """A resolved sweep: what every trial needs (it travels to them with tune.with_parameters)."""

    workdir: str
    name: str  # the W&B group of its trials
    base: dict[str, Any]  # every trial's config before its sampled values (steps, data, group set)
    space: dict[str, Any]  # SearchSpace.to_dict()
    samples: int  # --trials; each grid value of the space repeats them
    metric: str
    mode: str
    scheduler: str
    grace_steps: int
    data_index: str  # the sweep's one listing of the data
    user_data: str | None  # --data as given (None: the demo set), for the best config
    user_group: str | None  # --wandb-group as given, for the best config

    @property
    def max_steps(self) -> int:
        return int(self.base["steps"])

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.space)

    @property
    def trial_count(self) -> int:
        return self.samples * self.search_space.grid_size

    def trial_workdir(self, trial: str) -> str:
        return storage.join(self.workdir, TRIALS_FOLDER, trial)

    def trial_config(self, sampled: Mapping[str, Any], trial: str) -> TrainConfig:
        return TrainConfig.from_dict({**self.base, **sampled, "workdir": self.trial_workdir(trial)}).validate()


def default_sweep_workdir() -> str:
    return os.path.join("sweeps", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def trial_name(trial_id: str) -> str:
    """trial-0003 for Tune's trial id '<experiment>_00003' (its counter survives a restore)."""
    counter = trial_id.rsplit("_", 1)[-1]
    return f"trial-{int(counter):04d}" if counter.isdigit() else f"trial-{trial_id}"


def _trial_folder(trial) -> str:
    # Tune's name and folder for a trial are the trial workdir's name, so its output and tune/ match trials/.
    return trial_name(trial.trial_id)


def plan_sweep(base: TrainConfig, settings: SweepSettings, fixed: set[str], *, write: bool = True,
               log: Callable[[str], None] = print) -> SweepPlan:
    """Checks everything a sweep can check before Ray starts, lists the data once, and records the sweep.

    `fixed` holds the config fields the user set (flags or --config file): they leave the default space.
    With write=False nothing is written (the demo set is not drawn either).
    """
    settings.validate()
    if base.epochs is not None:
        raise ValueError("a sweep's trials all run --max-steps steps (ASHA compares them step by step); "
                         "give --max-steps instead of epochs")
    user_data, user_group = base.data, base.wandb_group  # as given: the best config keeps these
    workdir = storage.absolute(base.workdir or default_sweep_workdir())
    name = base.wandb_group or run_name(workdir)
    steps = settings.max_steps or base.steps or DEFAULT_STEPS
    changes: dict[str, Any] = {"steps": steps, "workdir": "", "wandb_group": name}
    if base.cpus_per_worker == 0:
        changes["cpus_per_worker"] = 1.0  # trials share the machine by Ray's accounting, one CPU per worker
    if "checkpoint_every" not in fixed:
        changes["checkpoint_every"] = max(1, math.ceil(steps / REPORTS_PER_TRIAL))
    if settings.metric.startswith("eval/") and base.eval_every == 0:
        if "eval_every" in fixed:
            raise ValueError(f"--metric {settings.metric} needs evaluation during training; "
                             f"--eval-every 0 turns it off")
        changes["eval_every"] = changes.get("checkpoint_every", base.checkpoint_every)
        log(f"Evaluating every {changes['eval_every']} steps (--metric {settings.metric}; set --eval-every "
            f"to change it)")
    base = base.replace(**changes)

    if base.data is None:
        data = ensure_demo_archive(workdir) if write else storage.join(workdir, demo_archive_name())
        log(f"No --data given: the trials train on the built-in demo set of {DEMO_COUNT} cartoon faces ({data})")
    else:
        data = storage.absolute(base.data)
    index_url = storage.join(workdir, "data-index.json")
    if write:
        # The one listing of the sweep; each trial splits it by its own seed and holdout fraction.
        index = index_for(data, index_url)
    elif base.data is None:
        index = DataIndex(data, [f"demo-{number}" for number in range(DEMO_COUNT)])
    else:
        index = DataIndex(data, list_images(open_source(data)))
    log(f"Data: {len(index.items)} images at {data}, listed once for every trial")
    base = base.replace(data=data).validate()

    space = build_space(base, fixed, separate_lr=settings.separate_lr, file=settings.search_space)
    base = base.replace(**space.constants)
    grace = settings.grace_steps or max(1, steps // REPORTS_PER_TRIAL)
    if grace > steps:
        raise ValueError(f"--grace-steps {grace} is more than the {steps} steps a trial runs")
    if base.eval_every:
        locate_weights(base.inception_weights)  # findable before Ray starts, as `animegan train` checks
    plan = SweepPlan(workdir=workdir, name=name, base=base.to_dict(), space=space.to_dict(),
                     samples=settings.trials, metric=settings.metric, mode=settings.mode,
                     scheduler=settings.scheduler, grace_steps=grace, data_index=index_url,
                     user_data=user_data, user_group=user_group)
    if write:
        record_sweep(plan)
    return plan


def record_sweep(plan: SweepPlan) -> None:
    """Writes sweep.json, or checks that this command is the sweep the workdir already holds."""
    url = storage.join(plan.workdir, SWEEP_FILE)
    document = storage.redacted(asdict(plan))  # --data may carry credentials
    if storage.exists(url):
        stored = json.loads(storage.read_text(url))
        if stored != document:
            raise ValueError(f"{plan.workdir} holds another sweep ({_differences(stored, document)}); run the "
                             f"command that started it to resume it, or choose a new --workdir")
        return
    storage.write_text(url, json.dumps(document, indent=2) + "\n")


def _differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    changed = []
    for key in sorted(set(stored) | set(new)):
        before, after = stored.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict) and key == "base":
            changed += [f"{field}: {before.get(field)!r} -> {after.get(field)!r}"
                        for field in sorted(set(before) | set(after)) if before.get(field) != after.get(field)]
        elif before != after:
            changed.append(f"{key}: {before!r} -> {after!r}")
    return "; ".join(changed)


# ------------------------------------------------------------------ the trial (runs in its Tune actor)

def run_trial(sampled: dict[str, Any], plan: SweepPlan) -> None:
    """One trial: an ordinary (resumable) training run in <sweep>/trials/<trial>, reporting to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from animegan.launcher import build_trainer, resolve

    trial = trial_name(ray.tune.get_context().get_trial_id())
    config = plan.trial_config(sampled, trial)
    layout = RunLayout(config.workdir)
    values = ", ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                       for name, value in sampled.items())
    print(f"{trial}: {values or 'the base config'} -> {layout.workdir}")
    check_same_trial(config, layout, sampled)
    if report_finished_run(config, layout):
        return
    if not storage.exists(layout.data_index):
        # The sweep's listing, split by this trial's seed and holdout fraction: resolve() finds it and lists nothing.
        listing = DataIndex.load(plan.data_index, source=plan.base["data"])
        DataIndex.split(listing.source, listing.items, config.holdout_fraction, config.seed).save(layout.data_index)
    config, _, resume_from = resolve(config, log=print)
    storage.remove(layout.status)  # a status left by an earlier attempt is not this one's
    build_trainer(config, layout, {"callbacks": [TuneReportCallback()]}, resume_from=resume_from).fit()


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
    if ended["status"] == "finished" and ended["step"] < config.steps:
        return False
    print(f"{layout.workdir} already {ended['status']} at step {ended['step']}: reporting it, not training again")
    ray.tune.report({**ended["metrics"], **latest_evaluation(layout.metrics, ended["step"]),
                     "step": ended["step"], "status": ended["status"]})
    return True


# ------------------------------------------------------------------ the driver

def trials_at_once(resources: Mapping[str, float], config: TrainConfig, *, requested: int | None, trials: int,
                   autoscaling: bool = False, log: Callable[[str], None] = print) -> int:
    """How many trials run together: as many as the cluster's CPUs and GPUs host whole, at most `requested`."""
    fits = []
    for kind, per_worker in (("CPU", config.cpus_per_worker), ("GPU", config.gpus_per_worker)):
        needed = config.workers * per_worker
        if needed > 0:
            # The epsilon keeps 2 / (4 x 0.5) at 1 despite floating point.
            fits.append(math.floor(resources.get(kind, 0) / needed + 1e-9))
    fit = min(fits) if fits else trials
    if fit < 1:
        if not autoscaling:
            raise ValueError(f"one trial needs {config.workers} workers x {config.cpus_per_worker:g} CPUs "
                             f"(and {config.gpus_per_worker:g} GPUs each), but the Ray cluster has "
                             f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs")
        fit = requested or 1  # the autoscaler will add nodes; Tune admits trials as they come up
    elif requested and requested > fit and not autoscaling:
        log(f"--concurrent {requested}: the cluster hosts {fit} trials at once; running {fit}")
    return max(1, min(fit, requested or fit, trials))


def make_tuner(plan: SweepPlan, at_once: int, log: Callable[[str], None] = print):
    """Ray Tune's Tuner for the sweep: the stored experiment when there is one, else a new one."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), TRIAL_DRIVER_RESOURCES)
    filesystem, root = storage.pyarrow_filesystem(plan.workdir)
    experiment = posixpath.join(root, TUNE_FOLDER)
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log(f"Resuming the sweep in {plan.workdir}: finished and failed trials are kept as they are, "
            f"unfinished ones continue from their latest checkpoints")
        return tune.Tuner.restore(experiment, trainable=trainable, storage_filesystem=filesystem)
    if plan.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="step", max_t=plan.max_steps, grace_period=plan.grace_steps,
                                  reduction_factor=ASHA_REDUCTION_FACTOR)
    else:
        scheduler = FIFOScheduler()
    config = TrainConfig.from_dict(plan.base)
    return tune.Tuner(
        trainable,
        param_space=plan.search_space.to_tune(),
        tune_config=tune.TuneConfig(
            metric=plan.metric, mode=plan.mode, num_samples=plan.samples, scheduler=scheduler,
            # Seeded, so a sweep started again from nothing samples the same trials; the limit
            # lives here because Tune ignores max_concurrent_trials beside its own generator.
            search_alg=BasicVariantGenerator(max_concurrent=at_once, random_state=config.seed),
            trial_name_creator=_trial_folder, trial_dirname_creator=_trial_folder,
        ),
        run_config=tune.RunConfig(name=TUNE_FOLDER, storage_path=root, storage_filesystem=filesystem, verbose=1),
    )


def run_sweep(base: TrainConfig, settings: SweepSettings, fixed: set[str], *, address: str | None = None,
              log: Callable[[str], None] = print):
    """Runs (or resumes) a sweep to the end and writes its table, best config and best generator.

    The sweep holds its workdir's lease (animegan/lease.py) throughout: one live sweep per workdir.
    """
    from animegan.lease import held

    base = base.replace(workdir=storage.absolute(base.workdir or default_sweep_workdir()))
    with held(base.workdir, command="animegan tune", log=log):
        plan = plan_sweep(base, settings, fixed, log=log)
        return execute_sweep(plan, concurrent=settings.concurrent, address=address, log=log)


def execute_sweep(plan: SweepPlan, *, concurrent: int | None = None, address: str | None = None,
                  log: Callable[[str], None] = print):
    """Runs the trials of a planned sweep on Ray Tune, then sweep_report.finish_sweep."""
    import ray

    from animegan.sweep_report import finish_sweep

    # Reports before a trial's first evaluation (and a diverged run's last one) lack eval/*;
    # strict checking would fail those trials. ASHA passes over results without the metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    started = cluster.connect(address, log)
    try:
        config = TrainConfig.from_dict(plan.base)
        at_once = trials_at_once(ray.cluster_resources(), config, requested=concurrent, trials=plan.trial_count,
                                 autoscaling=bool(os.environ.get("ANIMEGAN_ALLOW_AUTOSCALE")), log=log)
        log(f"Sweep {plan.name}: {plan.trial_count} trials of {plan.max_steps} steps, {at_once} at a time, each "
            f"{config.workers} worker(s) x {config.cpus_per_worker:g} CPUs"
            f"{f' + {config.gpus_per_worker:g} GPUs' if config.gpus_per_worker else ''}; objective {plan.metric} "
            f"({plan.mode}), scheduler {plan.scheduler}\n  searching: {plan.search_space.describe()}\n"
            f"  workdir: {plan.workdir}")
        results = make_tuner(plan, at_once, log).fit()
    finally:
        if started:
            ray.shutdown()
    return finish_sweep(plan, results, log=log)
