"""Seconds from `animegan train` to the first training step, before and after issue 10, and where they go.

    .venv/bin/python benchmarks/startup.py                  # 3 interleaved repeats of each variant (~10 min)
    .venv/bin/python benchmarks/startup.py --quick          # 1 repeat, tiny model: checks the script
    .venv/bin/python benchmarks/startup.py --before HEAD~3  # other baseline commits (comma-separated)

Variants, each a fresh `animegan train --steps 1 --log-every 1` on the built-in
demo faces in a new workdir with a local Ray instance, as `make run` starts:
  before        the code at the first --before revision (default: main before issue 10), extracted
                with `git archive` into a temporary folder and run with this venv (PYTHONPATH points at it)
  before_REV    the same for each further --before revision (default: main before Ray Train's
                controller stopped importing TensorFlow)
  after_cold    this checkout with an empty demo cache (the first run on a machine)
  after         this checkout with the demo cache filled (every later run)
The time to the first step is measured from outside for every variant: from
spawning the command to the first row of metrics.jsonl (written right after
step 1). For this checkout the workers also record where it went (startup.json,
animegan/startup.py): imports before the command's main(), resolving the config
and data (the demo set drawn or copied), Ray's start, the Ray Train controller and
worker processes (each imports TensorFlow), the strategy, the models, the
checkpoint scan, the dataset, metrics and W&B, and the first step with its tracing.
Writes JSON to --out (default benchmarks/results/startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE_ISSUE_10 = "622e9da"  # main when issue 10 began
BEFORE_OWN_BACKEND = "2560b1b"  # main before animegan/tf_backend.py


def _first_row_seconds(command: list[str], env: dict, cwd: Path, workdir: Path, log_file, timeout: float) -> float:
    """Runs the command to its end; returns the seconds from its spawn to the first metrics row."""
    metrics = workdir / "metrics.jsonl"
    spawned = time.time()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
    first_row = None
    while process.poll() is None:
        if first_row is None and metrics.exists() and metrics.read_text().strip():
            first_row = time.time()
        if time.time() - spawned > timeout:
            process.kill()
            raise RuntimeError(f"{command} took longer than {timeout:.0f} s")
        time.sleep(0.05)
    if process.returncode != 0 or first_row is None:
        raise RuntimeError(f"{command} failed (exit {process.returncode}); see {log_file.name}")
    return first_row - spawned


def run_variant(variant: str, before_tree: Path | None, cache: Path, args, log_file) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", TF_CPP_MIN_LOG_LEVEL="2", ANIMEGAN_CACHE=str(cache))
    env.pop("RAY_ADDRESS", None)
    if before_tree is not None:
        # `python -m` puts the working directory first on sys.path: run the baseline from its own tree.
        env["PYTHONPATH"] = str(before_tree)
    if variant == "after_cold":
        for cached in cache.glob("*"):
            cached.unlink()
    with tempfile.TemporaryDirectory(prefix="animegan-startup-") as folder:
        workdir = Path(folder) / "run"
        command = [sys.executable, "-m", "animegan", "train", "--workdir", str(workdir), "--steps", "1",
                   "--log-every", "1", "--noise-dim", str(args.noise_dim), "--generator-width", str(args.width),
                   "--discriminator-width", str(args.width)]
        spawned = time.time()
        seconds = _first_row_seconds(command, env, before_tree or REPO, workdir, log_file, args.timeout)
        result = {"seconds_to_first_step": seconds}
        startup = workdir / "startup.json"
        if before_tree is None and startup.exists():
            document = json.loads(startup.read_text())
            marks = document["marks"]
            # The command's main() starts the workers' clock; before it: the interpreter and imports.
            result["phases"] = {"interpreter and imports": marks[0][1] - spawned, **document["phases"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Time from `animegan train` to the first step, before and after.")
    parser.add_argument("--quick", action="store_true", help="1 repeat, tiny model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=f"{BEFORE_ISSUE_10},{BEFORE_OWN_BACKEND}",
                        help="git revisions of the baselines, comma-separated")
    parser.add_argument("--noise-dim", type=int, default=300)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "startup.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.noise_dim, args.width = 1, 16, 8

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    revisions = [revision.strip() for revision in args.before.split(",") if revision.strip()]
    baselines = {"before" if position == 0 else f"before_{revision}": revision
                 for position, revision in enumerate(revisions)}
    variants = [*baselines, "after_cold", "after"]
    samples: dict[str, list] = {variant: [] for variant in variants}
    loads = []
    with tempfile.TemporaryDirectory(prefix="animegan-before-") as before_root, \
            tempfile.TemporaryDirectory(prefix="animegan-cache-") as cache, \
            open(out.with_suffix(".log"), "w") as log_file:
        trees = {}
        for variant, revision in baselines.items():
            # The baseline's package, read from git without touching the checkout.
            trees[variant] = Path(before_root) / variant
            trees[variant].mkdir()
            archive = subprocess.run(["git", "archive", revision, "animegan"], cwd=REPO, capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(trees[variant])], input=archive, check=True)
        print(f"load average {os.getloadavg()}; baselines {baselines}; logs in {log_file.name}")
        for repeat in range(args.repeats):
            for variant in variants:
                loads.append(os.getloadavg()[0])
                result = run_variant(variant, trees.get(variant), Path(cache), args, log_file)
                samples[variant].append(result)
                print(f"[repeat {repeat + 1}/{args.repeats}] {variant:10s} "
                      f"{result['seconds_to_first_step']:5.1f} s to the first step (load {loads[-1]:.2f})",
                      flush=True)

    medians = {variant: statistics.median(r["seconds_to_first_step"] for r in runs) for variant, runs in samples.items()}
    phases = {}
    for variant in ("after_cold", "after"):
        names = samples[variant][0].get("phases", {})
        phases[variant] = {name: statistics.median(r["phases"][name] for r in samples[variant]) for name in names}
    summary = {
        "seconds_to_first_step": medians,
        "ratio_after_to_before": medians["after"] / medians["before"],
        "ratios_after_to_baselines": {variant: medians["after"] / medians[variant] for variant in baselines},
        "phases": phases,
        "samples": samples,
        "load_average": {"median_1min": statistics.median(loads), "max_1min": max(loads)},
        "settings": {"repeats": args.repeats, "baselines": baselines, "noise_dim": args.noise_dim,
                     "width": args.width},
    }
    print(f"\n{'phase':28s} {'after_cold':>10s} {'after':>8s}")
    for name in phases["after"]:
        print(f"{name:28s} {phases['after_cold'].get(name, 0):10.1f} {phases['after'][name]:8.1f}")
    print("\nseconds to the first step (median): " + ", ".join(f"{v} {s:.1f}" for v, s in medians.items())
          + f"; after/before {summary['ratio_after_to_before']:.2f}")
    print(f"load average (1 min) before each run: median {summary['load_average']['median_1min']:.2f}, "
          f"max {summary['load_average']['max_1min']:.2f}")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
