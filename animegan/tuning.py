"""Hyperparameter sweeps with Ray Tune: every trial is an ordinary training run under the sweep's workdir.

    animegan tune --workdir sweeps/faces --data gs://BUCKET/faces --trials 16 --max-steps 2000 \
        --holdout-fraction 0.05 --eval-samples 500
    animegan tune ... --scheduler pbt          # population-based training (sweep_schedulers.py)
    animegan tune ... --search optuna          # a Bayesian searcher (pip install 'animegan[tune]')

A sweep's workdir:

    sweep.json          what the sweep is (base config, search space, objective); a rerun must match it
    data-index.json     the data, listed once for every trial (the demo set, too, is drawn once)
    tune/               Ray Tune's experiment, which a rerun of the same command restores
    trials/trial-0000/  one training workdir per trial: config.json, metrics.jsonl, checkpoints, ...
    trials.csv, trials.json, best-config.json, best-generator.keras, best-generator/, winners.png
                        (sweep_report.py)

The budget is images, not steps: every trial trains on the same number of
images (--max-images, or --max-steps steps of the base config's batch size),
so a trial that samples a larger batch runs fewer steps, and the schedulers'
clock is `images_seen`, which every result carries. Trials report to Tune every
--report-every-images images (sweep_trial.py), with an evaluation when the
objective is one.

The trial's own process holds no CPU: its workers get all the trial's
resources, and trials are admitted only as many at a time as the cluster can
host, so no trial waits for workers that other trials' drivers sit on.
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
from animegan.sweep_schedulers import SCHEDULERS, SEARCHERS, check_searcher, perturbed_dimensions
from animegan.tracking import run_name

SWEEP_FILE = "sweep.json"
TUNE_FOLDER = "tune"
TRIALS_FOLDER = "trials"
# Unless --report-every-images is given, a trial reports (and evaluates, for an eval/ objective) this many
# times; under PBT every report is also a checkpoint.
REPORTS_PER_TRIAL = 10
# Unless --checkpoint-every is given, a trial under ASHA or FIFO checkpoints this many times (to resume).
CHECKPOINTS_PER_TRIAL = 4
# Unless --perturb-every-images is given, PBT considers a trial at every this many of its reports (each
# carries a checkpoint that Tune keeps until the sweep ends: perturbing less often keeps more of them unused).
REPORTS_PER_PERTURBATION = 1
# What trials report that a sweep can optimise: gan.STEP_METRICS and the evaluation's scores
# (named here so that the driver never imports TensorFlow).
OBJECTIVES = ("eval/fid", "eval/kid", "loss/d", "loss/g", "d/real", "d/fake")
# Tune cannot give a trial no resources at all; a byte of memory is nothing, and it keeps
# the trial's driver off the CPUs and GPUs its workers need (Ray Train's controller takes none either).
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 1}


@dataclass(frozen=True)
class SweepSettings:
    """What the user asked of the sweep, apart from the base training config."""

    trials: int
    max_steps: int | None = None  # in steps of the base config's batch size
    max_images: int | None = None
    concurrent: int | None = None
    metric: str = "eval/fid"
    mode: str = "min"
    scheduler: str = "asha"
    search: str = "random"
    grace_steps: int | None = None
    grace_images: int | None = None
    report_every_images: int | None = None
    perturb_every_images: int | None = None
    separate_lr: bool = False
    search_space: str | None = None  # a YAML/JSON file (search_space.py)

    def validate(self) -> "SweepSettings":
        if self.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {self.trials}")
        for flag, value in (("--max-steps", self.max_steps), ("--max-images", self.max_images),
                            ("--concurrent", self.concurrent), ("--grace-steps", self.grace_steps),
                            ("--grace-images", self.grace_images),
                            ("--report-every-images", self.report_every_images),
                            ("--perturb-every-images", self.perturb_every_images)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.max_steps is not None and self.max_images is not None:
            raise ValueError("give --max-steps or --max-images, not both")
        if self.grace_steps is not None and self.grace_images is not None:
            raise ValueError("give --grace-steps or --grace-images, not both")
        if self.metric not in OBJECTIVES:
            raise ValueError(f"--metric {self.metric!r} is not something trials report; use one of "
                             f"{', '.join(OBJECTIVES)}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"--mode must be min or max, got {self.mode!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.search not in SEARCHERS:
            raise ValueError(f"--search must be one of {', '.join(SEARCHERS)}, got {self.search!r}")
        if self.scheduler != "asha" and (self.grace_steps or self.grace_images):
            raise ValueError(f"--grace-steps and --grace-images are ASHA's; --scheduler {self.scheduler} has none")
        if self.scheduler != "pbt" and self.perturb_every_images:
            raise ValueError(f"--perturb-every-images is PBT's; --scheduler {self.scheduler} does not perturb")
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
    search: str
    budget_images: int  # every trial's length, in images seen
    report_every_images: int
    grace_images: int  # ASHA stops no trial before it has seen this many images
    perturb_every_images: int  # PBT's perturbation interval
    derived: list[str]  # cadences (config fields, in steps) each trial derives from its own batch size
    data_index: str  # the sweep's one listing of the data
    user_data: str | None  # --data as given (None: the demo set), for the best config
    user_group: str | None  # --wandb-group as given, for the best config

    @property
    def max_steps(self) -> int:
        """The steps of a trial at the base config's batch size (trials of other batch sizes differ)."""
        return int(self.base["steps"])

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.space)

    @property
    def trial_count(self) -> int:
        return self.samples * self.search_space.grid_size

    def trial_workdir(self, trial: str) -> str:
        return storage.join(self.workdir, TRIALS_FOLDER, trial)

    def report_steps(self, batch_size: int) -> int:
        """Steps between a trial's reports: --report-every-images, rounded up to whole batches."""
        return max(1, math.ceil(self.report_every_images / batch_size))

    def trial_config(self, sampled: Mapping[str, Any], trial: str) -> TrainConfig:
        """The trial's config: the base, its sampled values, and the length and cadences of its batch size."""
        config = TrainConfig.from_dict({**self.base, **sampled, "workdir": self.trial_workdir(trial)})
        return config.replace(**trial_length(config.batch_size, budget_images=self.budget_images,
                                             report_every_images=self.report_every_images,
                                             derived=self.derived, scheduler=self.scheduler)).validate()


def trial_length(batch_size: int, *, budget_images: int, report_every_images: int, derived: list[str],
                 scheduler: str) -> dict[str, int]:
    """A trial's steps, and the cadences the sweep derives (`derived`), for its batch size."""
    steps = max(1, math.ceil(budget_images / batch_size))
    report_steps = max(1, math.ceil(report_every_images / batch_size))
    values = {"steps": steps}
    if "eval_every" in derived:
        values["eval_every"] = report_steps
    if "checkpoint_every" in derived:
        # PBT copies checkpoints between trials at reports: every report is one.
        values["checkpoint_every"] = (report_steps if scheduler == "pbt"
                                      else max(1, math.ceil(steps / CHECKPOINTS_PER_TRIAL)))
    return values


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
        raise ValueError("a sweep's trials all see the same number of images (the schedulers compare them "
                         "image by image); give --max-steps or --max-images instead of epochs")
    if settings.scheduler == "pbt" and "checkpoint_every" in fixed:
        raise ValueError("--scheduler pbt checkpoints at every report (PBT copies checkpoints between trials "
                         "there); drop --checkpoint-every and set --report-every-images")
    user_data, user_group = base.data, base.wandb_group  # as given: the best config keeps these
    workdir = storage.absolute(base.workdir or default_sweep_workdir())
    name = base.wandb_group or run_name(workdir)
    # --max-steps counts steps of the base batch size: with the batch size searched, every trial
    # trains on as many images as the base batch size would in that many steps.
    budget = settings.max_images or (settings.max_steps or base.steps or DEFAULT_STEPS) * base.batch_size
    report_images = settings.report_every_images or max(1, math.ceil(budget / REPORTS_PER_TRIAL))
    if report_images > budget:
        raise ValueError(f"--report-every-images {report_images} is more than the {budget} images a trial sees")
    changes: dict[str, Any] = {"workdir": "", "wandb_group": name}
    derived = []
    if base.cpus_per_worker == 0:
        changes["cpus_per_worker"] = 1.0  # trials share the machine by Ray's accounting, one CPU per worker
    if "checkpoint_every" not in fixed:
        derived.append("checkpoint_every")
    if settings.metric.startswith("eval/") and base.eval_every == 0:
        if "eval_every" in fixed:
            raise ValueError(f"--metric {settings.metric} needs evaluation during training; "
                             f"--eval-every 0 turns it off")
        derived.append("eval_every")
        log(f"Evaluating at every report, every {report_images} images (--metric {settings.metric}; set "
            f"--report-every-images or --eval-every to change it)")
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

    # PBT perturbs the two networks' rates apart: the balance of G and D is what it tunes best.
    separate_lr = settings.separate_lr or settings.scheduler == "pbt"
    space = build_space(base, fixed, separate_lr=separate_lr, file=settings.search_space)
    base = base.replace(**space.constants)
    check_searcher(settings.search, settings.scheduler, space.dimensions)
    if settings.scheduler == "pbt":
        perturbed_dimensions(space.dimensions)
    grace = settings.grace_images or (settings.grace_steps * base.batch_size if settings.grace_steps
                                      else max(1, budget // 4))
    if grace > budget:
        given = (f"--grace-images {grace}" if settings.grace_images
                 else f"--grace-steps {settings.grace_steps} ({grace} images)")
        raise ValueError(f"{given} is more than the {budget} images a trial sees")
    perturb = settings.perturb_every_images or report_images * REPORTS_PER_PERTURBATION
    if base.eval_every or "eval_every" in derived:
        locate_weights(base.inception_weights)  # findable before Ray starts, as `animegan train` checks
    # The base config shows what a trial of the base batch size runs; trials of other sizes derive their own.
    base = base.replace(**trial_length(base.batch_size, budget_images=budget, report_every_images=report_images,
                                       derived=derived, scheduler=settings.scheduler))
    plan = SweepPlan(workdir=workdir, name=name, base=base.to_dict(), space=space.to_dict(),
                     samples=settings.trials, metric=settings.metric, mode=settings.mode,
                     scheduler=settings.scheduler, search=settings.search, budget_images=budget,
                     report_every_images=report_images, grace_images=grace, perturb_every_images=perturb,
                     derived=derived, data_index=index_url, user_data=user_data, user_group=user_group)
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


def population_note(plan: SweepPlan, at_once: int) -> str | None:
    """What the user should know when PBT's population is smaller than the sweep: None when it is not."""
    if plan.scheduler != "pbt" or at_once >= plan.trial_count:
        return None
    return (f"PBT: the cluster hosts {at_once} of the {plan.trial_count} trials at once; PBT compares and copies "
            f"only between trials that run together, and the others start as these end (--concurrent, or a "
            f"larger cluster, to run the whole population)")


def make_tuner(plan: SweepPlan, at_once: int, log: Callable[[str], None] = print):
    """Ray Tune's Tuner for the sweep: the stored experiment when there is one, else a new one."""
    from ray import tune

    from animegan.sweep_schedulers import make_scheduler, make_searcher
    from animegan.sweep_trial import run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), TRIAL_DRIVER_RESOURCES)
    filesystem, root = storage.pyarrow_filesystem(plan.workdir)
    experiment = posixpath.join(root, TUNE_FOLDER)
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log(f"Resuming the sweep in {plan.workdir}: finished and failed trials are kept as they are, "
            f"unfinished ones continue from their latest checkpoints")
        return tune.Tuner.restore(experiment, trainable=trainable, storage_filesystem=filesystem)
    return tune.Tuner(
        trainable,
        param_space=plan.search_space.to_tune(),
        tune_config=tune.TuneConfig(
            metric=plan.metric, mode=plan.mode, num_samples=plan.samples, scheduler=make_scheduler(plan),
            search_alg=make_searcher(plan, at_once, seed=TrainConfig.from_dict(plan.base).seed),
            trial_name_creator=_trial_folder, trial_dirname_creator=_trial_folder,
        ),
        # Only PBT's trials hand Tune their checkpoints (sweep_trial.py), and Tune keeps them all: Tune 2.60
        # registers a checkpoint PBT takes twice (the report's, PBT's save) and, told to keep only the last
        # few, deletes folders PBT still hands on. sweep_report removes them when the sweep ends.
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
        log(f"Sweep {plan.name}: {plan.trial_count} trials of {plan.budget_images} images ({plan.max_steps} steps "
            f"of {config.batch_size}), {at_once} at a time, each {config.workers} worker(s) x "
            f"{config.cpus_per_worker:g} CPUs{f' + {config.gpus_per_worker:g} GPUs' if config.gpus_per_worker else ''};"
            f" objective {plan.metric} ({plan.mode}), reported every {plan.report_every_images} images; scheduler "
            f"{plan.scheduler}, search {plan.search}\n  searching: {plan.search_space.describe()}\n"
            f"  workdir: {plan.workdir}")
        note = population_note(plan, at_once)
        if note:
            log(note)
        results = make_tuner(plan, at_once, log).fit()
    finally:
        if started:
            ray.shutdown()
    return finish_sweep(plan, results, log=log)
