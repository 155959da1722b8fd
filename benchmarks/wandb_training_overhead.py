"""Wall time of a whole training job with W&B offline versus disabled, on a local Ray instance.

    .venv/bin/python benchmarks/wandb_training_overhead.py             # 3 pairs of 60-step runs
    .venv/bin/python benchmarks/wandb_training_overhead.py --quick     # 1 pair of 10-step runs

Same tiny model and demo data for both; the order alternates between pairs so
that machine load drifts hit both alike. Offline W&B still does everything but
the upload: starting the run, the data preview at step 0, every row and sample
grid, the summary and finishing the run (what an online run adds is network
time on W&B's own thread). Reported as seconds per job and the ratio
offline / disabled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short pair, to check the benchmark runs")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    pairs, steps = (1, 10) if args.quick else (3, 60)
    os.environ.pop("WANDB_API_KEY", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import ray

    from animegan import cluster
    from animegan.config import TrainConfig
    from animegan.launcher import build_trainer, resolve
    from animegan.workdir import RunLayout

    cluster.start_local()
    seconds: dict[str, list[float]] = {"disabled": [], "offline": []}
    try:
        with tempfile.TemporaryDirectory() as root:
            for pair in range(pairs):
                for mode in (["disabled", "offline"] if pair % 2 == 0 else ["offline", "disabled"]):
                    config = TrainConfig(workdir=os.path.join(root, f"{mode}-{pair}"), steps=steps, batch_size=8,
                                         noise_dim=16, generator_width=8, discriminator_width=8, log_every=5,
                                         sample_every=10, checkpoint_every=steps, workers=args.workers,
                                         wandb_mode=mode)
                    config, _, _ = resolve(config, log=lambda *_: None)
                    started = time.perf_counter()
                    build_trainer(config, RunLayout(config.workdir)).fit()
                    seconds[mode].append(time.perf_counter() - started)
    finally:
        ray.shutdown()
    disabled, offline = statistics.median(seconds["disabled"]), statistics.median(seconds["offline"])
    print(f"{pairs} pair(s) of {steps}-step jobs, {args.workers} worker(s); seconds per job "
          f"(median): W&B disabled {disabled:.1f} {[round(s, 1) for s in seconds['disabled']]}, "
          f"W&B offline {offline:.1f} {[round(s, 1) for s in seconds['offline']]}; ratio {offline / disabled:.3f}")


if __name__ == "__main__":
    main()
