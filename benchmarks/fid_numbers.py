"""Closing numbers for the standard FID network: parity with the reference, speed, and real-vs-real FID/KID.

    .venv/bin/animegan fid-weights                  # once: fills the cache
    .venv/bin/python benchmarks/fid_numbers.py      # ~15 minutes on a quiet 2-core CPU
    .venv/bin/python benchmarks/fid_numbers.py --smoke   # 64 real images per side: checks the script

Measures, with the network users get (`--inception-weights fid`):
- parity: animegan's Keras features of the 16 fixture images against the
  reference TorchScript model's (tests/fixtures/fid_reference.npz, written by
  benchmarks/fid_reference_features.py with torch), as max |diff| / max
  |feature|, and the FID between the two fixture sets against the reference's;
- speed: seconds per 1,000 64x64 images for features (resize, network), in
  float32 and in bfloat16 (Keras's mixed_bfloat16 policy), after a warm-up
  batch, wall-clock and CPU time with the load average beside them, and
  bfloat16's parity on the fixture beside its speed;
- real against real: FID and KID between two disjoint random sets of --num
  real faces (default 1,000 each; chosen by --seed), the floor a perfect
  generator reaches at this sample size. FID is biased upwards at small N:
  compare only figures with the same N.
Results are printed and written as JSON (default benchmarks/results/fid_numbers.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from animegan import storage  # noqa: E402
from animegan.data.sources import list_images, open_source  # noqa: E402
from animegan.metrics import compute_metrics  # noqa: E402
from animegan.metrics.evaluation import sample_items  # noqa: E402
from animegan.metrics.feature_set import FeatureSet  # noqa: E402
from animegan.metrics.features import BATCH_SIZE, InceptionExtractor  # noqa: E402
from animegan.metrics.real_stats import read_images  # noqa: E402
from real_faces import real_faces_path  # noqa: E402  (this folder is on sys.path: scripts run from it)
from train_step import _processor  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "fid_reference.npz")
DEFAULT_JSON = os.path.join(HERE, "results", "fid_numbers.json")


def parity(features: np.ndarray, fid: float, reference: dict) -> dict:
    expected = reference["features_first"]
    worst = float(np.abs(features - expected).max())
    return {"max_abs_diff": worst, "max_abs_feature": float(np.abs(expected).max()),
            "relative_to_max_feature": worst / float(np.abs(expected).max()),
            "fid": fid, "reference_fid": float(reference["fid"]),
            "fid_relative_diff": abs(fid - float(reference["fid"])) / float(reference["fid"])}


def timed_features(run, images: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads) per 1,000 images through `run` (uint8 batch -> pool features).

    CPU time is what other jobs on a shared machine do not inflate; on an idle
    machine the wall-clock time is about the CPU time divided by the cores used.
    """
    run(images[:batch_size])  # warm-up: tracing and oneDNN's first calls are not what a user waits for per image
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(images), batch_size):
        run(images[start:start + batch_size])
    scale = 1000 / len(images)
    return (time.perf_counter() - started) * scale, (time.process_time() - cpu_started) * scale


def runner(precision: str):
    """A compiled uint8 -> pool features function with the standard weights in the given precision."""
    import keras
    import tensorflow as tf

    from animegan.metrics.fid_inception import scaled_inputs

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        network = InceptionExtractor("fid").build()
    finally:
        keras.config.set_dtype_policy(previous)

    @tf.function
    def run(images):
        outputs = network(scaled_inputs(images), training=False)
        return tf.cast(outputs[0] if isinstance(outputs, (list, tuple)) else outputs, tf.float32)

    return lambda images: run(tf.constant(images)).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(real_faces_path()), help="the real faces zip")
    parser.add_argument("--num", type=int, default=1000, help="real images per side (default 1000)")
    parser.add_argument("--speed-images", type=int, default=300, help="images timed per precision (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="64 images per side and 100 timed: checks the script")
    parser.add_argument("--out", default=DEFAULT_JSON)
    args = parser.parse_args()
    if not os.path.exists(args.data):
        raise SystemExit(f"no real faces at {args.data}; pass --data or set ANIMEGAN_REAL_FACES")
    count, timed = (64, 100) if args.smoke else (args.num, args.speed_images)

    with np.load(FIXTURE, allow_pickle=False) as arrays:
        reference = {key: arrays[key] for key in arrays.files}
    data = storage.absolute(args.data)
    source = open_source(data)
    chosen = sample_items(list_images(source), 2 * count, args.seed)
    order = np.random.default_rng([args.seed, 2]).permutation(len(chosen))
    first_items = sorted(chosen[index] for index in order[:count])
    second_items = sorted(chosen[index] for index in order[count:])
    print(f"Reading {2 * count} real faces from {data} ...")
    first_images, _ = read_images(source, first_items)
    second_images, _ = read_images(source, second_items)

    document = {"benchmark": "fid_numbers", "when": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.machine(), "processor": _processor(), "cpus": os.cpu_count(),
                "smoke": args.smoke, "batch_size": BATCH_SIZE, "precisions": {}}
    for precision in ("float32", "bfloat16"):
        run = runner(precision)
        load_before = os.getloadavg()[0]
        seconds_per_1000, cpu_seconds_per_1000 = timed_features(run, first_images[:timed], BATCH_SIZE)
        fixture_first = run(reference["images_first"])
        fixture_second = run(reference["images_second"])
        extractor_label = InceptionExtractor("fid").label
        fid = compute_metrics(["fid"], FeatureSet(fixture_second, None, extractor_label),
                              FeatureSet(fixture_first, None, extractor_label))["fid"]
        document["precisions"][precision] = {"seconds_per_1000_images": round(seconds_per_1000, 1),
                                             "cpu_seconds_per_1000_images": round(cpu_seconds_per_1000, 1),
                                             "timed_images": timed, "load_average_1min_before": load_before,
                                             "parity": parity(fixture_first, fid, reference)}
        print(f"{precision}: {seconds_per_1000:.1f} s ({cpu_seconds_per_1000:.1f} CPU-s) per 1,000 images "
              f"(load average {load_before:.1f} before); parity "
              f"{document['precisions'][precision]['parity']}")

    extractor = InceptionExtractor("fid")
    started = time.perf_counter()
    first = extractor.extract(first_images, log=print)
    second = extractor.extract(second_images, log=print)
    scores = compute_metrics(["fid", "kid"], second, first)
    document["real_vs_real"] = {
        "data": data, "images_per_side": [len(first), len(second)], "seed": args.seed, **scores,
        "extractor": extractor.label, "seconds": round(time.perf_counter() - started, 1),
        "note": "two disjoint random sets of real faces: the floor a perfect generator reaches at this N"}
    print(f"Real vs real ({len(first)} vs {len(second)} faces): FID {scores['fid']:.3f}, "
          f"KID {scores['kid']:.2e} +- {scores['kid_std']:.1e}")
    storage.write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
