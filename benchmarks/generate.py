"""Images per second of `animegan generate`, for 1 and 2 workers, and where the time goes.

    .venv/bin/python benchmarks/generate.py                    # default model, 2048 images per run
    .venv/bin/python benchmarks/generate.py --smoke            # tiny model, 128 images: checks the script runs
    .venv/bin/python benchmarks/generate.py --checkpoint runs/faces --num 10000 --runs in-process,2,4

Each run writes PNGs to a fresh local folder with `generate_many`, as the command
does: `in-process` is `--workers 1` (no Ray), a number K is K Ray workers of
one CPU each. Without --checkpoint the generator is an untrained one of the
default size (noise 300, width 64): speed does not depend on the weights.

Reported per run: images per second over the generation itself (after the
workers have started and loaded the generator; start-up is shown apart), its
ratio to the first run measured in the same invocation, and the share of worker
time spent in the generator, in PNG encoding and in writing. The table is
printed and written as JSON (default benchmarks/results/generate.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from animegan.config import TrainConfig  # noqa: E402
from animegan.distributed_generation import GenerationRequest, generate_many  # noqa: E402

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "generate.json")


def untrained_workdir(config: TrainConfig, folder: str) -> str:
    """A workdir holding generator.keras and generator.json, as training exports them."""
    from animegan.models import build_generator

    os.makedirs(folder, exist_ok=True)
    build_generator(config).save(os.path.join(folder, "generator.keras"))
    with open(os.path.join(folder, "generator.json"), "w", encoding="utf-8") as file:
        json.dump({"step": 0, "config": config.to_dict()}, file)
    return folder


def parse_runs(text: str) -> list[str]:
    runs = [run.strip() for run in text.split(",") if run.strip()]
    for run in runs:
        if run != "in-process" and not (run.isdigit() and int(run) > 0):
            raise SystemExit(f"--runs: expected 'in-process' or a positive worker count, got {run!r}")
    return runs


def measure(run: str, workdir: str, out: str, args: argparse.Namespace) -> dict:
    workers = 1 if run == "in-process" else int(run)
    request = GenerationRequest(workdir, out, count=args.num, seed=0, batch_size=args.batch_size,
                                image_format=args.format, workers=workers, use_ray=run != "in-process")
    summary = generate_many(request, log=lambda line: None)
    worker_seconds = sum(summary.phase_seconds.values())
    return {
        "run": run, "workers": workers, "images": summary.generated_images,
        "startup_seconds": round(summary.startup_seconds, 2),
        "generate_seconds": round(summary.generate_seconds, 3),
        "images_per_second": round(summary.images_per_second, 1),
        "worker_seconds": {phase: round(seconds, 3) for phase, seconds in summary.phase_seconds.items()},
        "share": {phase: round(seconds / worker_seconds, 3) for phase, seconds in summary.phase_seconds.items()},
        "megabytes_written": round(summary.bytes_written / 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a training workdir (default: an untrained default-size generator)")
    parser.add_argument("--num", type=int, default=2048, help="images per run (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--format", default="png", choices=["png", "jpg", "shards"])
    parser.add_argument("--runs", default="in-process,1,2",
                        help="comma-separated: in-process, or a number of Ray workers (default in-process,1,2)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and 128 images, to check the script")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON})")
    args = parser.parse_args()
    runs = parse_runs(args.runs)
    config = TrainConfig()
    if args.smoke:
        config = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8)
        args.num = min(args.num, 128)

    scratch = tempfile.mkdtemp(prefix="animegan-bench-generate-")
    started_ray = False
    try:
        workdir = args.checkpoint or untrained_workdir(config, os.path.join(scratch, "workdir"))
        if any(run != "in-process" for run in runs):
            # One Ray instance for all runs, so that its start-up is counted in none of them.
            from animegan import cluster

            started_ray = cluster.connect(None, log=lambda line: None)
        results = []
        for number, run in enumerate(runs):
            result = measure(run, workdir, os.path.join(scratch, f"out-{number}"), args)
            result["ratio"] = round(result["images_per_second"] / results[0]["images_per_second"], 2) \
                if results else 1.0
            results.append(result)
            print(f"  measured {run}: {result['images_per_second']} img/s", flush=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{args.num} images per run, batch {args.batch_size}, {args.format}, "
          f"{'tiny' if args.smoke else 'default'} model, {os.cpu_count()} CPUs")
    header = f"{'run':>11} {'workers':>7} {'img/s':>8} {'ratio':>6} {'start s':>8} {'gen s':>7} " \
             f"{'generator':>9} {'encode':>7} {'write':>6}"
    print(header)
    for result in results:
        share = result["share"]
        print(f"{result['run']:>11} {result['workers']:>7} {result['images_per_second']:>8.1f} "
              f"{result['ratio']:>6.2f} {result['startup_seconds']:>8.1f} {result['generate_seconds']:>7.2f} "
              f"{share['generator']:>9.0%} {share['encode']:>7.0%} {share['write']:>6.0%}")
    document = {
        "benchmark": "generate", "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(),
        "cpus": os.cpu_count(), "images": args.num, "batch_size": args.batch_size, "format": args.format,
        "model": {"noise_dim": config.noise_dim, "generator_width": config.generator_width,
                  "checkpoint": args.checkpoint}, "baseline": runs[0], "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)
    print(f"\nWrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
