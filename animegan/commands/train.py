"""`animegan train`: train (or resume) the DCGAN on Ray Train."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or resume a DCGAN",
        description="Train the DCGAN with TensorflowTrainer on a local Ray instance or a cluster. "
                    "Running the same command with the same --workdir resumes from the latest checkpoint; "
                    "--restart starts over and keeps the previous run under <workdir>/archive/.",
    )
    from animegan.commands.config_flags import add_config_flags

    add_config_flags(parser)
    parser.add_argument("--address", help="Ray cluster address to join (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--restart", action="store_true",
                        help="start over instead of resuming: the workdir's previous run moves, whole, to "
                             "<workdir>/archive/<time>/ (nothing is deleted)")
    parser.add_argument("--wait-for-workdir", type=float, default=0.0, metavar="SECONDS",
                        help="when another run holds the workdir, wait up to this long for it to end instead of "
                             "stopping at once; a run that died is taken over when its heartbeat is 5 min old, so "
                             "a retried job (cluster/kuberay/rayjob-train-own-cluster.yaml) waits 420 (default: 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from animegan.commands.config_flags import config_from_args
    from animegan.cluster import cluster_address
    from animegan.launcher import resolve, run_training

    config = config_from_args(args)
    if not args.wait_for_workdir >= 0:  # also refuses nan
        raise ValueError(f"--wait-for-workdir must be 0 or more seconds, not {args.wait_for_workdir:g}")
    if args.dry_run:
        resolved, _, _ = resolve(config, write=False, restart=args.restart,
                                  on_cluster=cluster_address(args.address) is not None, log=lambda *_: None)
        print(json.dumps(resolved.to_dict(), indent=2))
        return 0
    from ray.train.v2.api.exceptions import TrainingFailedError

    from animegan.failures import describe, is_actionable, root_cause
    from animegan.preemption import PREEMPTED, PREEMPTED_EXIT_STATUS

    try:
        outcome = run_training(config, address=args.address, restart=args.restart,
                               wait_for_workdir=args.wait_for_workdir)
    except TrainingFailedError as error:
        cause = root_cause(error)
        if is_actionable(cause):
            raise cause from None  # one line from cli.main: exit 2 for bad input, 1 for storage
        print(f"animegan: training failed: {describe(error)}\n"
              f"  Fix the cause and run the same command again: it resumes from the latest checkpoint.",
              file=sys.stderr)
        return 1
    if outcome.status == PREEMPTED:
        return PREEMPTED_EXIT_STATUS  # a job's retry runs the same command, which resumes after the step
    return 0 if outcome.status == "finished" else 1
