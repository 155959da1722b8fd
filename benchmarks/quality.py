"""How good are the faces? The seed notebook's recipe against animegan's, by standard FID, at equal steps.

    .venv/bin/python benchmarks/quality.py                        # (a), (b), (c) at 600 and 1,500 steps (~6 h on 2 AVX2 cores)
    .venv/bin/python benchmarks/quality.py --variants c --steps 600   # one variant, one length
    .venv/bin/python benchmarks/quality.py --quick                # 20 steps, 64 images: checks the script

On ../shared/data/anime-faces-64.zip with a fixed split (9,000 faces to train
on, 1,000 held out, chosen by seed 0), batch 64, one worker:
  (a) seed      the seed notebook's recipe written plainly (benchmarks/seed_reference.py:
                fit() with tf-keras's ImageDataGenerator), sampled from its live generator
  (b) preset    `animegan train --preset seed-notebook`: that recipe through animegan's
                distributed step and pipeline
  (c) default   `animegan train` with its defaults
  (p) paper     `animegan train --architecture dcgan-paper`: the default without batch
                norm at the discriminator's input, as the DCGAN paper has it (the default
                until that was found to be why animegan learnt faces slowly)
  (f) flip      the default with real images only flipped (no rotation, no shift)
  (d) diffaug   the default with DiffAugment (color, translation, cutout) on every image
                D sees, real and generated, instead of rotating/shifting real images
Each is trained to the first length, scored, then trained on to the next (the
animegan runs resume from their checkpoint: the same command with a larger
--steps). Scores: standard FID (the 2015-12-05 Inception, `animegan
fid-weights`) of --num generated images (default 2,000) against the 1,000
held-out faces, and KID with its standard deviation; the job's images/s (the
median of its logged windows, tracing excluded). FID is biased at small N:
compare only figures with the same N, and mind the real-vs-real floor printed
beside them (two disjoint halves of the held-out set).

Writes JSON to --out (default benchmarks/results/quality.json), each variant's
8x8 grid at each length under --root, and with --grids DIR a copy of the last
length's grids of (a) and (c) for the README. Rerunning continues where it
stopped: finished lengths are read back from --root, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from real_faces import real_faces_path  # noqa: E402
from report import vector_flags, write_json  # noqa: E402

HELD_OUT = 1000
SPLIT_SEED = 0
BATCH_SIZE = 64
GRID_SEED = 1234
EVAL_SEED = 99
VARIANTS = {"a": "seed reference (fit + ImageDataGenerator)", "b": "animegan --preset seed-notebook",
            "c": "animegan default", "p": "animegan --architecture dcgan-paper",
            "f": "default, real images only flipped (no rotation, no shift)",
            "d": "default, DiffAugment color,translation,cutout at D's input instead of rotating/shifting real images"}
# The flags each animegan variant adds to `animegan train`.
FLAGS = {"b": ["--preset", "seed-notebook"], "c": [], "p": ["--architecture", "dcgan-paper"],
         "f": ["--rotation", "0", "--shift", "0"],
         "d": ["--rotation", "0", "--shift", "0", "--diffaugment", "color,translation,cutout"]}


def split(data: str, root: str) -> tuple[str, str]:
    """train.zip and held-out.zip under root: a fixed 9,000 / 1,000 split of the archive's images."""
    train, held_out = os.path.join(root, "train.zip"), os.path.join(root, "held-out.zip")
    if os.path.exists(train) and os.path.exists(held_out):
        return train, held_out
    with zipfile.ZipFile(data) as source:
        names = sorted(name for name in source.namelist() if name.lower().endswith((".jpg", ".png")))
        if len(names) <= HELD_OUT:
            raise SystemExit(f"{data} has {len(names)} images; the benchmark holds out {HELD_OUT}")
        chosen = set(np.random.default_rng(SPLIT_SEED).permutation(len(names))[:HELD_OUT].tolist())
        # Written under temporary names and renamed, so an interrupted split is never mistaken for a whole one.
        with zipfile.ZipFile(train + ".part", "w") as train_zip, zipfile.ZipFile(held_out + ".part", "w") as held_zip:
            for position, name in enumerate(names):
                (held_zip if position in chosen else train_zip).writestr(name, source.read(name))
    os.replace(train + ".part", train)
    os.replace(held_out + ".part", held_out)
    return train, held_out


# ----------------------------------------------------------------------------- training

def train_seed_reference(train_zip: str, out: str, lengths: list[int], log_path: str) -> dict:
    done = os.path.join(out, "result.json")
    if os.path.exists(done):
        return json.load(open(done))
    command = [sys.executable, os.path.join(HERE, "seed_reference.py"), "--data", train_zip, "--steps",
               str(lengths[-1]), "--batch-size", str(BATCH_SIZE), "--snapshots", ",".join(map(str, lengths)),
               "--out", out]
    with open(log_path, "a") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode:
        raise SystemExit(f"the seed reference failed (exit {completed.returncode}); see {log_path}")
    rows = [json.loads(line) for line in open(os.path.join(out, "losses.jsonl"))]
    rates = [row["images_per_sec"] for row in rows][1:]  # the first window holds tracing
    result = {"images_per_sec": statistics.median(rates)}
    json.dump(result, open(done, "w"))
    return result


def train_animegan(train_zip: str, workdir: str, steps: int, flags: list[str], log_path: str) -> None:
    """`animegan train` to `steps` (resuming the workdir's run), keeping the exported generator of each length."""
    kept = os.path.join(workdir, f"generator-{steps}.keras")
    if os.path.exists(kept):
        return
    command = [sys.executable, "-m", "animegan", "train", *flags, "--data", train_zip,
               "--workdir", workdir, "--steps", str(steps), "--batch-size", str(BATCH_SIZE), "--seed", "0",
               "--sample-every", "100", "--log-every", "20", "--checkpoint-every", "100", "--wandb-mode", "disabled"]
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with open(log_path, "a") as log:
        completed = subprocess.run(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode:
        raise SystemExit(f"animegan train {' '.join(flags)} failed (exit {completed.returncode}); see {log_path}")
    shutil.copyfile(os.path.join(workdir, "generator.keras"), kept)


def animegan_images_per_sec(workdir: str) -> float:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
    rates = [row["perf/images_per_sec"] for row in rows if "perf/images_per_sec" in row]
    return statistics.median(rates[1:] or rates)


# ----------------------------------------------------------------------------- scoring

def generated_images(variant: str, root: str, steps: int, count: int, seed: int) -> np.ndarray:
    """uint8 images of the variant's generator at `steps`, from the same noise for every variant."""
    if variant == "a":
        from seed_reference import load_generator, to_uint8

        generator = load_generator(os.path.join(root, "a", f"generator-{steps}.weights.h5"))
        noise_dim = generator.input_shape[-1]
        noise = np.random.default_rng(seed).standard_normal((count, noise_dim)).astype(np.float32)
        return np.concatenate([to_uint8(generator(noise[start:start + 250], training=False))
                               for start in range(0, count, 250)])
    import keras

    from animegan.data.pipeline import to_uint8

    generator = keras.saving.load_model(os.path.join(root, variant, f"generator-{steps}.keras"), compile=False,
                                        safe_mode=True)
    noise = np.random.default_rng(seed).standard_normal((count, generator.input_shape[-1])).astype(np.float32)
    return np.concatenate([to_uint8(generator(noise[start:start + 250], training=False))
                           for start in range(0, count, 250)])


def save_grid(images: np.ndarray, path: str) -> None:
    from PIL import Image

    from animegan.grids import image_grid

    Image.fromarray(image_grid(images[:64], columns=8)).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(real_faces_path()))
    parser.add_argument("--steps", default="600,1500", help="comma-separated lengths (default 600,1500)")
    parser.add_argument("--variants", default="a,b,c")
    parser.add_argument("--num", type=int, default=2000, help="generated images per FID/KID (default 2,000)")
    parser.add_argument("--root", default=os.path.join(REPO, "runs", "quality"))
    parser.add_argument("--grids", help="copy the last length's grids of (a) and (c) here")
    parser.add_argument("--quick", action="store_true", help="20 steps and 64 images: checks the script")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "quality.json"))
    args = parser.parse_args()
    if not os.path.exists(args.data):
        raise SystemExit(f"no real faces at {args.data}; pass --data or set ANIMEGAN_REAL_FACES")
    lengths = [20] if args.quick else sorted(int(step) for step in args.steps.split(",") if step)
    count = 64 if args.quick else args.num
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    os.makedirs(args.root, exist_ok=True)
    log_path = os.path.join(args.root, "train.log")
    train_zip, held_out_zip = split(args.data, args.root)
    print(f"load average {os.getloadavg()}; logs in {log_path}", flush=True)

    # --- train every variant to every length
    speed, seconds = {}, {}
    for variant in variants:
        started = time.perf_counter()
        if variant == "a":
            speed[variant] = train_seed_reference(train_zip, os.path.join(args.root, "a"), lengths,
                                                  log_path)["images_per_sec"]
        else:
            workdir = os.path.join(args.root, variant)
            for steps in lengths:
                train_animegan(train_zip, workdir, steps, FLAGS[variant], log_path)
            speed[variant] = animegan_images_per_sec(workdir)
        seconds[variant] = time.perf_counter() - started
        print(f"({variant}) {VARIANTS[variant]}: trained, {speed[variant]:.1f} images/s", flush=True)

    # --- score every generator against the held-out faces
    from animegan.data.sources import list_images, open_source
    from animegan.metrics import compute_metrics
    from animegan.metrics.features import InceptionExtractor
    from animegan.metrics.real_stats import read_images

    extractor = InceptionExtractor("fid")
    held_out_source = open_source(held_out_zip)
    real_images, _ = read_images(held_out_source, list_images(held_out_source))
    real = extractor.extract(real_images)
    halves = [extractor.extract(real_images[:len(real_images) // 2]),
              extractor.extract(real_images[len(real_images) // 2:])]
    floor = compute_metrics(["fid", "kid"], halves[0], halves[1])
    scores: dict[str, dict[str, dict]] = {}
    for variant in variants:
        for steps in lengths:
            images = generated_images(variant, args.root, steps, count, EVAL_SEED)
            save_grid(generated_images(variant, args.root, steps, 64, GRID_SEED),
                      os.path.join(args.root, f"grid-{variant}-{steps}.png"))
            metrics = compute_metrics(["fid", "kid"], extractor.extract(images), real)
            scores.setdefault(variant, {})[str(steps)] = {key: metrics[key] for key in ("fid", "kid", "kid_std")}
            print(f"({variant}) step {steps}: FID {metrics['fid']:.1f}, KID {metrics['kid']:.4f} "
                  f"± {metrics['kid_std']:.4f}", flush=True)

    # --- report
    print(f"\nstandard FID / KID: {count} generated vs {len(real_images)} held-out real faces "
          f"(real vs real, {len(real_images) // 2} vs {len(real_images) // 2}: FID {floor['fid']:.1f}, "
          f"KID {floor['kid']:.4f})")
    header = "".join(f"{f'FID@{steps}':>10s}{f'KID@{steps}':>16s}" for steps in lengths)
    print(f"{'variant':44s}{header}{'img/s':>8s}")
    for variant in variants:
        cells = "".join(f"{scores[variant][str(steps)]['fid']:10.1f}"
                        f"{scores[variant][str(steps)]['kid']:9.4f}±{scores[variant][str(steps)]['kid_std']:.4f}"
                        for steps in lengths)
        print(f"({variant}) {VARIANTS[variant]:40s}{cells}{speed[variant]:8.1f}")
    ratios = {}
    if "a" in scores:
        for variant in [name for name in scores if name != "a"]:
            for steps in lengths:
                ratios[f"{variant}/a FID@{steps}"] = scores[variant][str(steps)]["fid"] / scores["a"][str(steps)]["fid"]
    if "b" in speed and "c" in speed:
        ratios["c/b images_per_sec"] = speed["c"] / speed["b"]
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")

    if args.grids:
        os.makedirs(args.grids, exist_ok=True)
        for variant in [name for name in ("a", "c") if name in scores]:
            shutil.copyfile(os.path.join(args.root, f"grid-{variant}-{lengths[-1]}.png"),
                            os.path.join(args.grids, f"quality-{variant}-{lengths[-1]}.png"))
    document = {
        "benchmark": "quality", "data": args.data, "train_images": len(list_images(open_source(train_zip))),
        "held_out": len(real_images), "generated": count, "batch_size": BATCH_SIZE, "lengths": lengths,
        "variants": {name: VARIANTS[name] for name in variants}, "scores": scores, "images_per_sec": speed,
        "seconds": seconds, "real_vs_real": {"count": len(real_images) // 2, **floor}, "ratios": ratios,
        "extractor": extractor.label,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                    "vector_flags": vector_flags()},
    }
    write_json(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
