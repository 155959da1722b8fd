"""Closing numbers for evaluation: FID and KID of an untrained generator, a trained one, and real images.

    .venv/bin/python benchmarks/eval_numbers.py                              # untrained and real-vs-real
    .venv/bin/python benchmarks/eval_numbers.py --workdir runs/faces-20min   # plus the trained generator
    .venv/bin/python benchmarks/eval_numbers.py --smoke                      # 16 images each: checks it runs

Every row is scored against the same reference: the held-out split that
`animegan train --data <zip> --holdout-fraction 0.05 --seed 0` makes (500 of
the 10,000 real faces), or the workdir's own split when --workdir is given.
The rows:
- untrained: a freshly initialised generator of the default size (seed 0);
- trained: the newest generator in --workdir (train it with --holdout-fraction 0.05);
- real: --num real training images (never the held-out ones): the floor a
  perfect generator would reach at this sample size.
FID is biased upwards at small sample sizes, so only rows with the same --num
compare; KID is unbiased. The network is the standard FID Inception (run
`animegan fid-weights` once); with --inception-weights random every number is
labelled as not comparable with published FID. The real images' features are cached (in the
workdir, or in the temp folder), so a second invocation reads no real images.
Also reported: seconds per image of Inception features on this machine.
Results are printed and written as JSON (default benchmarks/results/eval_numbers.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from animegan import storage  # noqa: E402
from animegan.commands.eval import format_table  # noqa: E402
from animegan.config import TrainConfig  # noqa: E402
from animegan.data.index import DataIndex  # noqa: E402
from animegan.data.sources import list_images, open_source  # noqa: E402
from animegan.metrics.during_training import real_stats_cache  # noqa: E402
from animegan.metrics.evaluation import Evaluator, Reference, sample_items  # noqa: E402
from animegan.metrics.features import InceptionExtractor  # noqa: E402
from animegan.workdir import RunLayout  # noqa: E402
from real_faces import real_faces_path  # noqa: E402  (this folder is on sys.path: scripts run from it)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = str(real_faces_path())
DEFAULT_JSON = os.path.join(HERE, "results", "eval_numbers.json")
HOLDOUT_FRACTION = 0.05  # what the README's 20-minute training command uses
METRICS = ("fid", "kid")


def data_index(data: str, workdir: str | None, seed: int) -> DataIndex:
    """The workdir's split of `data` when it has one, else the split a training run would make."""
    data = storage.absolute(data)
    if workdir:
        layout = RunLayout(storage.absolute(workdir))
        if storage.exists(layout.data_index):
            index = DataIndex.load(layout.data_index)
            if index.source == data and index.holdout:
                return index
            raise SystemExit(f"{workdir} was not trained on {data} with a held-out split; train it with "
                             f"--holdout-fraction {HOLDOUT_FRACTION}, or leave out --workdir")
    return DataIndex.split(data, list_images(open_source(data)), HOLDOUT_FRACTION, seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="the real faces zip (default $ANIMEGAN_REAL_FACES, else ../shared/data/anime-faces-64.zip)")
    parser.add_argument("--workdir", help="a trained run's workdir, to score its generator too")
    parser.add_argument("--num", type=int, default=500, help="images per row, generated or real (default 500)")
    parser.add_argument("--inception-weights", default="fid", help="fid (default; `animegan fid-weights` fills it) or random")
    parser.add_argument("--seed", type=int, default=0, help="split and noise seed (default 0)")
    parser.add_argument("--smoke", action="store_true", help="16 images per row and reference: checks the script")
    parser.add_argument("--out", default=DEFAULT_JSON, help="JSON results file")
    args = parser.parse_args()
    if not os.path.exists(args.data):
        raise SystemExit(f"no real faces at {args.data}; pass --data or set ANIMEGAN_REAL_FACES")
    count = 16 if args.smoke else args.num

    from animegan.generation import LoadedGenerator, load_generator
    from animegan.models import build_generator

    index = data_index(args.data, args.workdir, args.seed)
    holdout = sample_items(index.holdout, count, args.seed) if args.smoke else index.holdout
    reference = Reference(index.source, tuple(holdout), f"{len(holdout)} held-out images of {index.source}")
    cache = (real_stats_cache(storage.absolute(args.workdir)) if args.workdir
             else os.path.join(tempfile.gettempdir(), "animegan-real-stats"))
    extractor = InceptionExtractor(args.inception_weights)
    evaluator = Evaluator(extractor, reference, cache)
    print(f"Reference: {reference.label}\nExtractor: {extractor.label}\nImages per row: {count}")
    evaluator.reference_features()

    rows = []
    config = TrainConfig()
    untrained = LoadedGenerator(build_generator(config), 0, "untrained", config.noise_dim)
    started = time.perf_counter()
    scores = evaluator.evaluate_generator(untrained, count, args.seed, METRICS)
    rows.append({"name": "untrained generator (default size, seed 0)", "images": count, **scores})
    seconds_per_image = (time.perf_counter() - started) / count
    if args.workdir:
        trained = load_generator(args.workdir)
        scores = evaluator.evaluate_generator(trained, count, args.seed, METRICS)
        rows.append({"name": f"trained generator (step {trained.step})", "images": count, **scores})
    real_items = sample_items(index.items, count, args.seed + 1)
    rows.append({"name": "real training images", "images": len(real_items),
                 **evaluator.scores(evaluator.real_features(index.source, real_items), METRICS)})

    print()
    print(format_table(rows))
    print(f"Extractor: {extractor.label}\nInception features + metrics: {seconds_per_image:.3f} s per image "
          f"on this machine (noisy when other jobs share it)")
    document = {
        "benchmark": "eval_numbers", "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(), "cpus": os.cpu_count(), "smoke": args.smoke,
        "extractor": extractor.label, "comparable_with_published_fid": extractor.comparable,
        "data": index.source, "reference": reference.label, "workdir": args.workdir, "images_per_row": count,
        "seconds_per_image": round(seconds_per_image, 4),
        "rows": [{**row, "extractor": extractor.label} for row in rows],
    }
    storage.write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
