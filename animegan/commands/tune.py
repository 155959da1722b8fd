"""`animegan tune`: a hyperparameter sweep with Ray Tune (animegan/tuning.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json

# Set per trial by the sweep: --max-steps, the trial's workdir, --workers-per-trial.
EXCLUDED_FIELDS = ("steps", "epochs", "workers")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="search hyperparameters with Ray Tune",
        description="Run a sweep of training trials with Ray Tune (ASHA, PBT or FIFO; random or Optuna search): by "
                    "default it searches the learning rate (log-uniform 1e-5..1e-3), the batch size "
                    "{32, 64, 128, 256} and the noise dimension {64, 100, 128, 300}. Training flags set the base "
                    "config of every trial; a field set by a flag (or --config) is fixed and not searched. Every "
                    "trial trains on the same number of images, and the schedulers count images, not steps. Each "
                    "trial is an ordinary run in <workdir>/trials/<trial>; the sweep writes trials.csv/json, "
                    "best-config.json, the best generator and winners.png into --workdir. Running the same command "
                    "again resumes the sweep.",
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--trials", type=int, required=True, metavar="N",
                       help="trials to sample (each value of a grid in the search space repeats them)")
    sweep.add_argument("--concurrent", type=int, metavar="K",
                       help="at most this many trials at once (default: as many as the cluster hosts)")
    sweep.add_argument("--workers-per-trial", type=int, dest="workers", metavar="W", default=argparse.SUPPRESS,
                       help="Ray Train workers of each trial (default 1)")
    sweep.add_argument("--max-images", type=int, metavar="N",
                       help="images each trial trains on, the schedulers' horizon (default: --max-steps steps)")
    sweep.add_argument("--max-steps", type=int, metavar="S",
                       help="the same in steps of --batch-size (default: --steps of --config, else 1200); a "
                            "trial that samples another batch size runs as many images")
    sweep.add_argument("--report-every-images", type=int, metavar="N",
                       help="trials report to Tune (and evaluate, for an eval/ --metric) every N images, rounded up "
                            "to whole steps (default: a tenth of a trial)")
    sweep.add_argument("--search-space", metavar="FILE",
                       help="YAML or JSON file adding to or changing the search space, e.g. "
                            "{beta1: {uniform: [0.3, 0.9]}, batch_size: null}; see README")
    sweep.add_argument("--separate-lr", action="store_true",
                       help="sample --generator-lr and --discriminator-lr separately instead of one --lr")
    sweep.add_argument("--metric", default="eval/fid",
                       help="what trials are compared on (default eval/fid, which turns evaluation on; "
                            "loss/g or loss/d for runs without evaluation)")
    sweep.add_argument("--mode", choices=("min", "max"), default="min", help="minimise or maximise --metric")
    sweep.add_argument("--scheduler", choices=("asha", "pbt", "fifo"), default="asha",
                       help="asha stops poor trials early; pbt (population-based training) lets the worst trials "
                            "continue from the best ones' checkpoints with perturbed learning rates (and other "
                            "searched values that can change mid-run); fifo runs every trial to the end")
    sweep.add_argument("--search", choices=("random", "optuna"), default="random",
                       help="random sampling, or Optuna's TPE, which learns from finished trials (pip install "
                            "'animegan[tune]'; not with pbt)")
    sweep.add_argument("--grace-images", type=int, metavar="N",
                       help="ASHA stops no trial before it has seen N images (default: a quarter of a trial)")
    sweep.add_argument("--grace-steps", type=int, metavar="STEPS",
                       help="the same in steps of --batch-size")
    sweep.add_argument("--perturb-every-images", type=int, metavar="N",
                       help="PBT's perturbation interval: it considers a trial for exploit and explore every N "
                            "images (default: every report)")
    sweep.add_argument("--address", help="Ray cluster address to join (default: RAY_ADDRESS, else a local instance)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the sweep (base config, search space, objective) and exit")
    from animegan.commands.config_flags import add_config_flags

    add_config_flags(parser, exclude=EXCLUDED_FIELDS)
    parser.set_defaults(run=run)


def fixed_fields(args: argparse.Namespace) -> set[str]:
    """Config fields the user set, on the command line or in --config: the search leaves them alone."""
    from animegan.config import TrainConfig, load_config_file

    names = {config_field.name for config_field in dataclasses.fields(TrainConfig)}
    given = {name for name in vars(args) if name in names}  # unset flags are absent (argparse.SUPPRESS)
    if args.config:
        given |= set(load_config_file(args.config))
    return given


def run(args: argparse.Namespace) -> int:
    from animegan.commands.config_flags import config_from_args
    from animegan.tuning import SweepSettings, plan_sweep, run_sweep

    config = config_from_args(args)
    settings = SweepSettings(trials=args.trials, max_steps=args.max_steps, max_images=args.max_images,
                             concurrent=args.concurrent, metric=args.metric, mode=args.mode,
                             scheduler=args.scheduler, search=args.search, grace_steps=args.grace_steps,
                             grace_images=args.grace_images, report_every_images=args.report_every_images,
                             perturb_every_images=args.perturb_every_images, separate_lr=args.separate_lr,
                             search_space=args.search_space)
    fixed = fixed_fields(args)
    if args.dry_run:
        plan = plan_sweep(config, settings, fixed, write=False, log=lambda *_: None)
        print(json.dumps({**dataclasses.asdict(plan), "trial_count": plan.trial_count}, indent=2))
        return 0
    outcome = run_sweep(config, settings, fixed, address=args.address)
    return 0 if outcome.best is not None else 1
