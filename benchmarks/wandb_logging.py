"""How long the training thread spends handing metrics and sample grids to W&B.

    .venv/bin/python benchmarks/wandb_logging.py            # 500 rows, 10 grids (about 30 s)
    .venv/bin/python benchmarks/wandb_logging.py --quick    # 50 rows, 2 grids

Baseline: calling W&B directly on the training thread (`run.log`, `wandb.Image`),
as a plain integration would. Measured: animegan's WandbWriter, which only
enqueues and lets its own thread call W&B. Both log the same rows and 8x8 grids
(530x530 PNG) to an offline run, in the same process, one after the other; a third
case points the writer at a server that accepts connections and never answers.
Reported as microseconds per call on the training thread and as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animegan import tracking  # noqa: E402
from animegan.config import TrainConfig  # noqa: E402
from animegan.workdir import RunLayout  # noqa: E402

ROW = {"loss/d": 1.2, "loss/g": 0.8, "d/real": 0.6, "d/fake": 0.4, "perf/images_per_sec": 70.0,
       "perf/step_time": 0.9, "lr/generator": 2e-4, "lr/discriminator": 2e-4, "data/skipped": 0}


def grid() -> np.ndarray:
    """An 8x8 grid of smooth 64x64 pictures with a little noise: compresses like real samples, not like noise."""
    from animegan.grids import image_grid

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    tiles = []
    for _ in range(64):
        colour = rng.uniform(0, 255, 3)
        picture = colour * (0.5 + 0.5 * np.sin(6 * x + rng.uniform(0, 6)) * y)[..., None]
        tiles.append(np.clip(picture + rng.normal(0, 4, picture.shape), 0, 255))
    return image_grid(np.stack(tiles).astype(np.uint8), columns=8)


def timed_calls(log_row, log_image, rows: int, images: int) -> tuple[float, float]:
    """Mean seconds per row call and per image call on this thread."""
    started = time.perf_counter()
    for step in range(1, rows + 1):
        log_row(step, dict(ROW))
    row_seconds = (time.perf_counter() - started) / rows
    picture = grid()
    started = time.perf_counter()
    for index in range(images):
        log_image(index, picture)
    return row_seconds, (time.perf_counter() - started) / images


def direct(folder: str, rows: int, images: int) -> tuple[float, float]:
    import wandb

    run = wandb.init(project="benchmark", dir=folder, mode="offline", reinit="create_new",
                     settings=wandb.Settings(console="off", silent=True))
    result = timed_calls(lambda step, row: run.log({"step": step, **row}),
                         lambda step, image: run.log({"step": step, "samples/ema": wandb.Image(image)}),
                         rows, images)
    run.finish()
    wandb.teardown()
    return result


def through_writer(folder: str, rows: int, images: int, mode: str = "offline") -> tuple[float, float, float]:
    config = TrainConfig(workdir=folder, wandb_mode=mode)
    layout = RunLayout(folder)
    options = tracking.resolve_options(config, layout, tracking.run_identity(layout), {}, os.environ)
    writer = tracking.WandbWriter(options, config.to_dict(), log=lambda message: None)
    row_seconds, image_seconds = timed_calls(writer.write, lambda step, image: writer.log_image(
        step, "samples/ema", image, f"step {step}"), rows, images)
    started = time.perf_counter()
    writer.close()
    return row_seconds, image_seconds, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check that the benchmark runs")
    args = parser.parse_args()
    rows, images = (50, 2) if args.quick else (500, 10)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)
    with tempfile.TemporaryDirectory() as root:
        os.environ["WANDB_DATA_DIR"] = os.path.join(root, "data")
        direct_row, direct_image = direct(os.path.join(root, "direct"), rows, images)
        writer_row, writer_image, writer_close = through_writer(os.path.join(root, "writer"), rows, images)

        listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
        os.environ.update({"WANDB_API_KEY": "benchmark" * 5, "WANDB_INIT_TIMEOUT": "5",
                           "WANDB_BASE_URL": f"http://127.0.0.1:{listener.getsockname()[1]}"})
        silent_row, silent_image, silent_close = through_writer(os.path.join(root, "silent"), rows, images, "online")
        listener.close()

    print(f"{rows} rows, {images} grids of 530x530; time on the training thread per call:")
    print(f"  direct W&B calls (baseline):   row {direct_row * 1e6:8.0f} us   grid {direct_image * 1e6:8.0f} us")
    print(f"  WandbWriter, offline:          row {writer_row * 1e6:8.0f} us   grid {writer_image * 1e6:8.0f} us"
          f"   ratio row {writer_row / direct_row:.3f}, grid {writer_image / direct_image:.3f}; close {writer_close:.1f} s")
    print(f"  WandbWriter, silent server:    row {silent_row * 1e6:8.0f} us   grid {silent_image * 1e6:8.0f} us"
          f"   ratio row {silent_row / direct_row:.3f}, grid {silent_image / direct_image:.3f}; close {silent_close:.1f} s"
          f" (start-up fallback to offline included)")


if __name__ == "__main__":
    main()
