"""Images per second of the training step, against a plain Keras reference and against the hardware.

    .venv/bin/python benchmarks/train_step.py              # default model, batches 64 and 128, 3 repeats (~1 h)
    .venv/bin/python benchmarks/train_step.py --quick      # tiny model, batch 64, 1 repeat: checks the script
    .venv/bin/python benchmarks/train_step.py --variants single_process,single_process_bf16 --batches 64

Variants (each measured in a fresh process, so that precision policies and
thread pools cannot leak from one into the next):
  keras_reference        the same GAN the usual keras-io way: keras.Model.train_step + fit() (keras_reference.py)
  single_process         animegan.gan.make_train_step, no Ray, float32
  single_process_bf16    the same under --precision mixed_bfloat16
  single_process_jit     the same, float32, with --jit (XLA)
  single_process_bf16_jit  mixed_bfloat16 with --jit
  single_process_pipeline  float32, fed by the real tf.data pipeline (decode + augment) instead of one batch in memory
  ray_1_worker           `animegan train` through TensorflowTrainer, 1 worker with both cores
  ray_2_workers          2 workers of 1 core each (MultiWorkerMirroredStrategy over gRPC)
  matmul_peak            tf.matmul of large square matrices, float32 and bfloat16: the hardware's reachable peak

The single-process variants train on one batch of real faces held in memory
(from ../shared/data/anime-faces-64.zip, or random pixels when it is absent):
they time the step alone. Each time `--windows` windows of `--window-steps`
steps after a warm-up (tracing and two steps), syncing with the host once per
window. The Ray variants run the whole job on the real faces and take the
job's own `perf/images_per_sec` from metrics.jsonl, after the first two logged
windows (start-up, tracing). Repeats are interleaved (every variant once, then
again), and each figure is the median over repeats, so slow drift in the
machine's load hits all variants alike. The load average is recorded.

Achieved GFLOP/s = images/s x the step's FLOPs per image (benchmarks/step_flops.py),
compared with the matmul peak of the same precision measured in the same run.
Writes JSON to --out (default benchmarks/results/train_step.json): batch-64
figures at the top level, every batch under "by_batch".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_faces import real_faces_path  # noqa: E402

REAL_FACES = real_faces_path()
SINGLE_PROCESS = {
    "single_process": dict(precision="float32", jit=False),
    "single_process_bf16": dict(precision="mixed_bfloat16", jit=False),
    "single_process_jit": dict(precision="float32", jit=True),
    "single_process_bf16_jit": dict(precision="mixed_bfloat16", jit=True),
    "single_process_pipeline": dict(precision="float32", jit=False, pipeline=True),
}
RAY = {"ray_1_worker": 1, "ray_2_workers": 2}
VARIANTS = ["matmul_peak", "keras_reference", *SINGLE_PROCESS, *RAY]
REQUIRED = ["keras_reference", "single_process", "ray_1_worker", "ray_2_workers", "single_process_bf16"]


# ----------------------------------------------------------------------------- measurements (child side)

def _model_config(args, batch: int, **changes):
    from animegan.config import TrainConfig

    return TrainConfig(noise_dim=args["noise_dim"], generator_width=args["width"], discriminator_width=args["width"],
                       batch_size=batch, wandb_mode="disabled", **changes)


def _real_batch(batch: int):
    """One batch of real faces, uint8 (random pixels without the archive): what the step trains on."""
    import numpy as np
    from PIL import Image

    if not REAL_FACES.exists():
        return np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    with zipfile.ZipFile(REAL_FACES) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))[:batch]
        images = [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB").resize((64, 64)))
                  for name in names]
    return np.stack(images)


def _time_windows(run_steps, args, batch: int) -> list[float]:
    """Images/s of each timed window; `run_steps(n)` runs n steps and waits for the last."""
    run_steps(1)  # tracing
    run_steps(2)  # warm-up
    rates = []
    for _ in range(args["windows"]):
        start = time.perf_counter()
        run_steps(args["window_steps"])
        rates.append(args["window_steps"] * batch / (time.perf_counter() - start))
    return rates


def measure_single_process(args, batch: int) -> dict:
    import tensorflow as tf

    from animegan.gan import build_state, make_train_step

    options = dict(SINGLE_PROCESS[args["variant"]])
    pipeline = options.pop("pipeline", False)
    config = _model_config(args, batch, **options)
    state = build_state(config)
    step = make_train_step(state, config, tf.distribute.get_strategy())
    if pipeline:
        from animegan.data.sources import list_images, open_source
        from animegan.data.pipeline import training_dataset

        source = open_source(str(REAL_FACES))
        dataset = training_dataset(source, list_images(source), batch_size=batch)
    else:
        dataset = tf.data.Dataset.from_tensors(tf.constant(_real_batch(batch))).repeat()
    batches = iter(dataset)

    def run_steps(count: int) -> None:
        for _ in range(count):
            metrics = step(next(batches))
        metrics.numpy()

    traced_at = time.perf_counter()
    rates = _time_windows(run_steps, args, batch)
    return {"windows": rates, "traces": step.experimental_get_tracing_count(),
            "seconds": time.perf_counter() - traced_at}


def measure_keras_reference(args, batch: int) -> dict:
    import keras
    import tensorflow as tf
    from keras_reference import build_reference

    config = _model_config(args, batch)
    gan = build_reference(config)
    # The reference trains on float images in [-1, 1], as keras-io's does.
    dataset = tf.data.Dataset.from_tensors(tf.constant(_real_batch(batch), tf.float32) / 127.5 - 1.0).repeat()
    marks: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            float(logs["d_loss"])  # waits for the step, as the project's loop waits once per window
            marks.append(time.perf_counter())

    steps = 3 + args["windows"] * args["window_steps"]
    gan.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[Clock()], verbose=0)
    rates, start = [], 2  # after tracing (step 0) and two warm-up steps
    for _ in range(args["windows"]):
        end = start + args["window_steps"]
        rates.append(args["window_steps"] * batch / (marks[end] - marks[start]))
        start = end
    return {"windows": rates, "jit_compile": bool(gan.jit_compile)}


def measure_ray(args, batch: int) -> dict:
    from animegan.launcher import run_training
    from animegan.workdir import RunLayout

    workers = RAY[args["variant"]]
    skip = 2  # logged windows before the steady state: tracing, first steps
    steps = (skip + args["windows"]) * args["window_steps"]
    with tempfile.TemporaryDirectory(prefix="animegan-bench-") as workdir:
        config = _model_config(args, batch, workdir=workdir, workers=workers,
                               cpus_per_worker=float((os.cpu_count() or 2) // workers),
                               data=str(REAL_FACES) if REAL_FACES.exists() else None,
                               steps=steps, log_every=args["window_steps"], sample_every=steps,
                               checkpoint_every=steps, keep_checkpoints=1)
        started = time.perf_counter()
        run_training(config, log=lambda *_: None)
        rows = [json.loads(line) for line in Path(RunLayout(workdir).metrics).read_text().splitlines()]
    rates = [row["perf/images_per_sec"] for row in rows if "perf/images_per_sec" in row][skip:]
    return {"windows": rates, "job_seconds": time.perf_counter() - started}


def measure_matmul(args) -> dict:
    import tensorflow as tf

    peaks = {}
    for dtype in ("float32", "bfloat16"):
        best = 0.0
        for size in args["matmul_sizes"]:
            a = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 1]), dtype)
            b = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 2]), dtype)
            multiply = tf.function(tf.matmul)
            multiply(a, b).numpy()
            repeats = max(3, int(args["matmul_flop"] / (2 * size ** 3)))
            start = time.perf_counter()
            for _ in range(repeats):
                product = multiply(a, b)
            product.numpy()
            best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9)
        peaks[dtype] = best
    return peaks


def run_child(args: dict) -> dict:
    variant = args["variant"]
    if variant == "matmul_peak":
        return measure_matmul(args)
    results = {}
    for batch in args["batches"]:
        if variant == "keras_reference":
            results[str(batch)] = measure_keras_reference(args, batch)
        elif variant in SINGLE_PROCESS:
            results[str(batch)] = measure_single_process(args, batch)
        else:
            results[str(batch)] = measure_ray(args, batch)
    return results


# ----------------------------------------------------------------------------- orchestration (parent side)

def _load() -> float:
    return os.getloadavg()[0]


def _spawn(args: dict, log_file) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", WANDB_MODE="disabled",
                           RAY_TRAIN_ENABLE_PRINT_PATCH="0")
        completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(args), "--result", result.name],
                                   stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
        if completed.returncode != 0:
            raise RuntimeError(f"{args['variant']} failed (exit {completed.returncode}); see {log_file.name}")
        return json.loads(Path(result.name).read_text())


def _rate(measurement: dict) -> float:
    """A child's throughput: images over time across its windows (the harmonic mean of the window rates)."""
    windows = measurement["windows"]
    return len(windows) / sum(1.0 / rate for rate in windows)


def summarise(samples: dict, peaks: list[dict], flops_per_image: float, batches: list[int]) -> dict:
    peak = {dtype: statistics.median(p[dtype] for p in peaks) for dtype in ("float32", "bfloat16")}
    by_batch = {}
    for batch in batches:
        rates = {variant: statistics.median(_rate(run[str(batch)]) for run in runs)
                 for variant, runs in samples.items()}
        spread = {variant: [round(_rate(run[str(batch)]), 2) for run in runs] for variant, runs in samples.items()}
        achieved = {variant: rate * flops_per_image / 1e9 for variant, rate in rates.items()}

        def ratio(numerator: str, denominator: str):
            if numerator in rates and denominator in rates:
                return rates[numerator] / rates[denominator]
            return None

        f32 = achieved.get("single_process")
        by_batch[str(batch)] = {
            "images_per_sec": rates,
            "images_per_sec_per_repeat": spread,
            "achieved_gflops": achieved,
            "step_gflops": f32,
            "ratios": {
                "single_process/keras_reference": ratio("single_process", "keras_reference"),
                "ray_1_worker/single_process": ratio("ray_1_worker", "single_process"),
                "ray_2_workers/single_process": ratio("ray_2_workers", "single_process"),
                "single_process_bf16/single_process": ratio("single_process_bf16", "single_process"),
                "single_process_jit/single_process": ratio("single_process_jit", "single_process"),
                "single_process_bf16_jit/single_process_bf16": ratio("single_process_bf16_jit",
                                                                     "single_process_bf16"),
                "single_process_pipeline/single_process": ratio("single_process_pipeline", "single_process"),
                "float32 step/float32 matmul peak": f32 / peak["float32"] if f32 else None,
                "bf16 step/bf16 matmul peak": (achieved["single_process_bf16"] / peak["bfloat16"]
                                               if "single_process_bf16" in achieved else None),
            },
        }
    first = by_batch[str(batches[0])]
    top = {key: first[key] for key in ("achieved_gflops", "step_gflops", "ratios")}
    # The required names are always there (None when not measured), without touching by_batch.
    top["images_per_sec"] = {**{name: None for name in REQUIRED}, **first["images_per_sec"]}
    return {**top,
            "matmul_peak_gflops": peak, "step_flops_per_image": flops_per_image, "by_batch": by_batch}


def print_table(summary: dict, batches: list[int]) -> None:
    peak = summary["matmul_peak_gflops"]
    print(f"\nmatmul peak: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s; "
          f"step: {summary['step_flops_per_image'] / 1e9:.3f} GFLOP per image")
    print(f"{'variant':26s} {'batch':>5s} {'img/s':>8s} {'x single':>9s} {'GFLOP/s':>8s} {'% peak':>7s}  repeats")
    for batch in batches:
        figures = summary["by_batch"][str(batch)]
        base = figures["images_per_sec"].get("single_process")
        for variant, rate in figures["images_per_sec"].items():
            dtype = "bfloat16" if "bf16" in variant else "float32"
            gflops = figures["achieved_gflops"][variant]
            relative = f"{rate / base:9.2f}" if base else f"{'':9s}"
            print(f"{variant:26s} {batch:5d} {rate:8.1f} {relative} {gflops:8.0f} {100 * gflops / peak[dtype]:6.0f}%  "
                  f"{figures['images_per_sec_per_repeat'][variant]}")
    print("\nratios (batch " + ", ".join(str(b) for b in batches) + "):")
    for name in summary["ratios"]:
        values = [summary["by_batch"][str(b)]["ratios"][name] for b in batches]
        if any(value is not None for value in values):
            print(f"  {name:45s} " + "  ".join("-" if v is None else f"{v:.3f}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description="Training-step throughput against a Keras reference and the hardware.")
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 64, 1 repeat, short windows")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3, help="timed windows per measurement")
    parser.add_argument("--window-steps", type=int, default=8, help="steps per timed window")
    parser.add_argument("--noise-dim", type=int, default=300)
    parser.add_argument("--width", type=int, default=64, help="generator and discriminator base width")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_step.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        Path(args.result).write_text(json.dumps(run_child(json.loads(args.child))))
        return
    if args.quick:
        args.noise_dim, args.width, args.batches, args.repeats = 32, 8, "64", 1
        args.windows, args.window_steps = 2, 3
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    batches = [int(b) for b in args.batches.split(",")]
    child = {"noise_dim": args.noise_dim, "width": args.width, "batches": batches, "windows": args.windows,
             "window_steps": args.window_steps, "matmul_sizes": [512] if args.quick else [2048, 4096],
             "matmul_flop": 2e9 if args.quick else 1.5e11}
    if "matmul_peak" not in variants:
        variants.insert(0, "matmul_peak")  # every ratio to the hardware needs it

    from animegan.config import TrainConfig
    from step_flops import count

    flops = count(TrainConfig(noise_dim=args.noise_dim, generator_width=args.width,
                              discriminator_width=args.width)).per_image
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    loads = []
    samples: dict[str, list] = {v: [] for v in variants if v != "matmul_peak"}
    peaks = []
    started = time.time()
    print(f"load average {os.getloadavg()}; logs of every measurement in {log_path}")
    with open(log_path, "w") as log_file:
        for repeat in range(args.repeats):
            for variant in variants:
                load_before = _load()
                began = time.perf_counter()
                measurement = _spawn({**child, "variant": variant}, log_file)
                loads.append({"variant": variant, "repeat": repeat, "load_before": load_before,
                              "load_after": _load()})
                if variant == "matmul_peak":
                    peaks.append(measurement)
                    shown = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in measurement.items())
                else:
                    samples[variant].append(measurement)
                    shown = ", ".join(f"batch {b}: {_rate(m):.1f} img/s" for b, m in measurement.items())
                print(f"[repeat {repeat + 1}/{args.repeats}] {variant:24s} {shown}  "
                      f"({time.perf_counter() - began:.0f} s, load {load_before:.2f})", flush=True)
            # Written after every repeat: an interrupted run keeps the repeats it finished.
            summary = summarise(samples, peaks, flops, batches)
            summary.update({
                "load_average": {"max_1min": max(entry["load_before"] for entry in loads),
                                 "median_1min": statistics.median(entry["load_before"] for entry in loads),
                                 "per_measurement": loads},
                "settings": {**child, "repeats": args.repeats, "repeats_done": repeat + 1, "variants": variants,
                             "quick": args.quick, "real_faces": REAL_FACES.exists()},
                "machine": {"cpus": os.cpu_count(), "processor": _processor()},
                "samples": samples,
                "minutes": (time.time() - started) / 60,
            })
            out.write_text(json.dumps(summary, indent=2) + "\n")

    print_table(summary, batches)
    print(f"\nload average (1 min) before each measurement: median {summary['load_average']['median_1min']:.2f}, "
          f"max {summary['load_average']['max_1min']:.2f}")
    print(f"wrote {out}")


def _processor() -> dict:
    """The CPU's model and the vector extensions that decide float32 and bfloat16 matmul speed."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "extensions": [flag for flag in wanted if flag in flags]}


if __name__ == "__main__":
    main()
