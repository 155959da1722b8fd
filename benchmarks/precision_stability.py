"""Does mixed_bfloat16 train as well as float32 on the real faces, and how much faster is the whole job?

    .venv/bin/python benchmarks/precision_stability.py                 # 1,300 steps each, batch 64 (hours on a CPU without bf16)
    .venv/bin/python benchmarks/precision_stability.py --steps 120 --batch-size 32 --num 200   # the committed run (~45 min here)
    .venv/bin/python benchmarks/precision_stability.py --steps 20 --num 16 --root /tmp/ps   # checks the script

For each precision, the same command a user runs, in a fresh process and workdir
(rerunning resumes, and a finished run is not trained again):

    animegan train --data <real faces zip> --workdir <root>/<precision> --steps N --precision P
                   --holdout-fraction 0.05 --seed 0 --wandb-mode disabled

Same seed, so both runs see the same data order, noise and initial weights.
Then, from each run's metrics.jsonl: whether every logged loss is finite, the
job's own images/s (median of the logged windows after the first, which holds
tracing), and the losses and discriminator outputs over the last fifth of the
run (a collapsed or diverging GAN shows there: D(x) near 1 and D(G(z)) near 0,
loss/g climbing); and FID/KID of each exported EMA generator against the run's
500 held-out faces, with the seeded random Inception network (labelled: not
comparable with published FID, but the same yardstick for both rows).
Writes JSON to --out (default benchmarks/results/precision_stability.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from real_faces import real_faces_path  # noqa: E402  (this folder is on sys.path: scripts run from it)
from report import write_json  # noqa: E402

DEFAULT_DATA = str(real_faces_path())
HOLDOUT_FRACTION = 0.05
SUMMARY_KEYS = ("loss/d", "loss/g", "d/real", "d/fake")


def train(data: str, workdir: str, steps: int, batch_size: int, precision: str, log_path: str) -> float:
    """Runs (or resumes) the job to `steps`; returns its wall-clock seconds."""
    command = [sys.executable, "-m", "animegan", "train", "--data", data, "--workdir", workdir,
               "--steps", str(steps), "--batch-size", str(batch_size), "--precision", precision, "--holdout-fraction", str(HOLDOUT_FRACTION),
               "--seed", "0", "--sample-every", str(max(1, steps // 13)), "--log-every", str(max(1, steps // 65)),
               "--checkpoint-every", str(max(1, steps // 4)), "--wandb-mode", "disabled"]
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    started = time.perf_counter()
    with open(log_path, "a") as log:
        completed = subprocess.run(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise SystemExit(f"{precision}: animegan train failed (exit {completed.returncode}); see {log_path}")
    return time.perf_counter() - started


def summarise_metrics(workdir: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
    rows = [row for row in rows if all(key in row for key in SUMMARY_KEYS)]  # step rows, not evaluation rows
    tail = rows[-max(1, len(rows) // 5):]
    rates = [row["perf/images_per_sec"] for row in rows if "perf/images_per_sec" in row]
    rates = rates[1:] or rates  # the first window holds tracing
    return {
        "logged_rows": len(rows),
        "last_step": rows[-1]["step"],
        "all_finite": all(math.isfinite(row[key]) for row in rows for key in SUMMARY_KEYS),
        "images_per_sec": statistics.median(rates),
        "last_fifth": {key: {"mean": statistics.fmean(row[key] for row in tail),
                             "min": min(row[key] for row in tail), "max": max(row[key] for row in tail)}
                       for key in SUMMARY_KEYS},
    }


def evaluate(workdirs: dict[str, str], count: int, weights: str) -> dict[str, dict]:
    """FID/KID of each workdir's generator against the first workdir's held-out split (all splits are equal)."""
    from animegan.data.index import DataIndex
    from animegan.generation import load_generator
    from animegan.metrics.during_training import real_stats_cache
    from animegan.metrics.evaluation import Evaluator, choose_reference
    from animegan.metrics.features import BATCH_SIZE, InceptionExtractor
    from animegan.workdir import RunLayout

    first = next(iter(workdirs.values()))
    index = DataIndex.load(RunLayout(first).data_index)
    reference, _ = choose_reference(index.source, index, count, 0)
    extractor = InceptionExtractor(weights, batch_size=min(BATCH_SIZE, count))
    evaluator = Evaluator(extractor, reference, real_stats_cache(first))
    scores = {}
    for precision, workdir in workdirs.items():
        generator = load_generator(workdir)
        scores[precision] = {"generator_step": generator.step, "extractor": extractor.label,
                             **evaluator.evaluate_generator(generator, count, 0, ("fid", "kid"))}
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=1300, help="steps per run (default 1,300: ~20 min in float32 here)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--root", default=os.path.join(REPO, "runs", "precision"), help="parent of the workdirs")
    parser.add_argument("--num", type=int, default=500, help="images per FID/KID (default 500)")
    parser.add_argument("--inception-weights", default="random")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "precision_stability.json"))
    args = parser.parse_args()
    if not os.path.exists(args.data):
        raise SystemExit(f"no real faces at {args.data}; pass --data or set ANIMEGAN_REAL_FACES")
    precisions = [name.strip() for name in args.precisions.split(",") if name.strip()]
    os.makedirs(args.root, exist_ok=True)
    log_path = os.path.join(args.root, "train.log")
    print(f"load average {os.getloadavg()}; training logs in {log_path}", flush=True)

    workdirs, runs = {}, {}
    for precision in precisions:
        workdirs[precision] = os.path.join(args.root, precision)
        seconds = train(args.data, workdirs[precision], args.steps, args.batch_size, precision, log_path)
        runs[precision] = {"workdir": workdirs[precision], "seconds": seconds, "load_after": os.getloadavg()[0],
                           **summarise_metrics(workdirs[precision])}
        print(f"{precision}: {seconds:.0f} s, {runs[precision]['images_per_sec']:.1f} images/s, "
              f"finite: {runs[precision]['all_finite']}", flush=True)
    for precision, scores in evaluate(workdirs, args.num, args.inception_weights).items():
        runs[precision]["eval"] = scores

    print(f"\n{'precision':16s} {'img/s':>7s} {'finite':>6s} {'loss/d':>7s} {'loss/g':>7s} {'D(x)':>6s} "
          f"{'D(G(z))':>7s} {'FID':>8s} {'KID':>7s}   (last fifth of the run; FID/KID: {args.num} images)")
    for precision, run in runs.items():
        tail = run["last_fifth"]
        print(f"{precision:16s} {run['images_per_sec']:7.1f} {str(run['all_finite']):>6s} "
              f"{tail['loss/d']['mean']:7.3f} {tail['loss/g']['mean']:7.3f} {tail['d/real']['mean']:6.3f} "
              f"{tail['d/fake']['mean']:7.3f} {run['eval']['fid']:8.2f} {run['eval']['kid']:7.4f}")
    base = precisions[0]
    ratios = {f"{name}/{base} images_per_sec": runs[name]["images_per_sec"] / runs[base]["images_per_sec"]
              for name in precisions[1:]}
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    document = {"benchmark": "precision_stability", "steps": args.steps, "batch_size": args.batch_size, "data": args.data, "runs": runs,
                "ratios": ratios, "extractor": next(iter(runs.values()))["eval"]["extractor"],
                "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}}
    write_json(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
