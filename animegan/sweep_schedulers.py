"""Which trials a sweep runs and for how long: the searcher (random, Optuna) and the scheduler (ASHA, PBT, FIFO).

Every scheduler keeps time in `images_seen` (steps x global batch, reported with
every result), not in steps: a batch-256 trial has seen 16x the images of a
batch-16 trial after the same number of steps, so ASHA's rungs and PBT's
perturbation interval are counts of images.

PBT (population-based training) changes a trial's hyperparameters while it
runs: at every perturbation point a trial in the bottom quarter of the
population takes the checkpoint of one in the top quarter (exploit, see
sweep_trial.adopt_checkpoint) and continues with that trial's values, some
of them perturbed (explore). Only fields that can change between two steps
without changing what the checkpoint holds are perturbed (PERTURBABLE): the
learning rates, Adam's betas, the regularisation and augmentation. Shapes
(noise_dim, the widths) cannot change, and neither can batch_size: the
checkpoint's data position and `images_seen` count steps of one batch size, so
a trial's batch size changes only with an exploit, together with the checkpoint
of a trial trained at that size. Searched fields outside PERTURBABLE are sampled
once per trial, as under ASHA, and travel with the checkpoints PBT copies.

The searcher proposes each new trial's values: random (Tune's own generator,
seeded) or Optuna's TPE, a Bayesian searcher that learns from finished trials.
Optuna is an optional dependency (`pip install 'animegan[tune]'`), and Ray Tune
refuses a searcher beside PBT, which chooses its trials' values itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from animegan.search_space import Dimension
    from animegan.tuning import SweepPlan

SCHEDULERS = ("asha", "pbt", "fifo")
SEARCHERS = ("random", "optuna")
ASHA_REDUCTION_FACTOR = 3
# Fields PBT may change in a running trial: none of them changes a variable's shape or the data position.
PERTURBABLE = ("lr", "generator_lr", "discriminator_lr", "beta1", "beta2", "label_smoothing", "ema_decay",
               "r1_gamma", "r1_every", "flip", "rotation", "shift", "diffaugment", "loss")
OPTUNA_INSTALL = "pip install 'animegan[tune]'"


def check_searcher(search: str, scheduler: str, dimensions: dict[str, "Dimension"]) -> None:
    """Raises ValueError for a searcher that cannot run here: Optuna missing, beside PBT, or given a grid."""
    if search == "random":
        return
    if scheduler == "pbt":
        raise ValueError("--search optuna cannot be used with --scheduler pbt: PBT chooses its trials' values "
                         "itself (Ray Tune refuses a searcher beside it); use --search random")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError(f"--search optuna needs Optuna, which is not installed: {OPTUNA_INSTALL}") from None
    grids = [name for name, dimension in dimensions.items() if dimension.kind == "grid"]
    if grids:
        raise ValueError(f"--search optuna cannot search a grid ({', '.join(grids)}): Optuna samples every "
                         f"trial's values itself; use choice instead")


def perturbed_dimensions(dimensions: dict[str, "Dimension"]) -> dict[str, "Dimension"]:
    """The searched fields PBT perturbs; ValueError when there are none (PBT would only copy checkpoints)."""
    perturbed = {name: dimension for name, dimension in dimensions.items() if name in PERTURBABLE}
    if not perturbed:
        searched = ", ".join(dimensions) or "nothing"
        raise ValueError(f"--scheduler pbt has nothing to perturb: the search space holds {searched}, none of "
                         f"which can change while a trial runs; search one of {', '.join(PERTURBABLE)}")
    return perturbed


def make_scheduler(plan: "SweepPlan"):
    """The Tune scheduler of a planned sweep, with images_seen as its clock."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "asha":
        # A trial at the horizon ends by itself: stopping it at its last report would cut off its export.
        return ASHAScheduler(time_attr="images_seen", max_t=plan.budget_images, grace_period=plan.grace_images,
                             reduction_factor=ASHA_REDUCTION_FACTOR, stop_last_trials=False)
    if plan.scheduler == "pbt":
        perturbed = perturbed_dimensions(plan.search_space.dimensions)
        return _population_based_training()(
            horizon=plan.budget_images, time_attr="images_seen", perturbation_interval=plan.perturb_every_images,
            hyperparam_mutations={name: _mutation(dimension) for name, dimension in perturbed.items()},
            custom_explore_fn=lambda config: clip_to_space(config, perturbed),
            # Results before a trial's first evaluation lack eval/*: PBT passes over them, as ASHA does.
            require_attrs=False,
            # Which trial copies which, and how values move, depends on the order trials report in: PBT's
            # decisions are not reproducible, so Tune writes them down (tune/pbt_global.txt, pbt_policy_*.txt).
            log_config=True,
        )
    return FIFOScheduler()


def _population_based_training():
    """Ray's PBT, minus two moves that cost a restart (a TensorFlow start-up) and gain nothing here.

    - Ray's PBT pauses a trial at a perturbation point whenever another is pending or paused, so
      that a population larger than the cluster takes turns. A sweep's population is never larger
      than what runs at once (the searcher admits no more trials than the cluster hosts), and the
      only paused trial is one PBT just made exploit, which restarts in the place it left.
    - A trial's last report (at the `horizon`, the budget in images) is no perturbation point: an
      exploit there would restart the trial only to end it as a copy of another.
    """
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class WholePopulationPBT(PopulationBasedTraining):
        def __init__(self, *, horizon: int, **options):
            super().__init__(**options)
            self.horizon = horizon

        def on_trial_result(self, tune_controller, trial, result):
            if result.get(self._time_attr, 0) >= self.horizon:
                return TrialScheduler.CONTINUE
            decision = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE else decision

    return WholePopulationPBT


def _mutation(dimension: "Dimension"):
    # A range: perturbed by x0.8 or x1.2 (or resampled); a list: moved to a neighbouring value (or resampled).
    if dimension.kind in ("choice", "grid"):
        return list(dimension.values)
    return dimension.to_tune()


def clip_to_space(config: dict[str, Any], dimensions: dict[str, "Dimension"]) -> dict[str, Any]:
    """PBT's explored config with every perturbed range value put back inside its range.

    Multiplying by 1.2 can take beta1 = 0.85 past its range (and past what Adam accepts);
    the range's bound is the closest value the space allows.
    """
    for name, dimension in dimensions.items():
        if name not in config or dimension.kind not in ("loguniform", "uniform", "randint"):
            continue
        low, high = dimension.values
        if dimension.kind == "randint":
            config[name] = int(min(max(round(config[name]), low), high - 1))
        else:
            config[name] = float(min(max(config[name], low), high))
    return config


def make_searcher(plan: "SweepPlan", at_once: int, seed: int):
    """The Tune search algorithm of a planned sweep, admitting at most `at_once` trials together.

    Seeded, so a sweep started again from nothing proposes the same first trials; the concurrency
    limit lives here because Tune ignores max_concurrent_trials beside a search algorithm.
    """
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if plan.search == "random":
        return BasicVariantGenerator(max_concurrent=at_once, random_state=seed)
    check_searcher(plan.search, plan.scheduler, plan.search_space.dimensions)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # TPE samples at random until this many trials have finished; Optuna's default (10) would leave
    # a 16-trial sweep only 6 guided trials.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=optuna_startup_trials(plan.trial_count))
    # Tune hands it the metric, the mode and the space (set_search_properties), as to any searcher.
    return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=at_once)


def optuna_startup_trials(trials: int) -> int:
    """Random trials before TPE models the results: a quarter of the sweep, at least 2, at most Optuna's 10."""
    return min(10, max(2, math.ceil(trials / 4)))
