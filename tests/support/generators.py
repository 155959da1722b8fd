"""A small trained-looking generator in a workdir, made in seconds without Ray training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY = {"noise_dim": 16, "generator_width": 8, "discriminator_width": 8, "batch_size": 8}


def write_exported_generator(workdir: Path, step: int = 30, seed: int = 0) -> Path:
    """generator.keras + generator.json in `workdir`, as training.export_generator writes them.

    The batch-norm statistics are set away from their initial values, so that inference mode
    matters and the images have structure rather than a flat colour.
    """
    from animegan.config import TrainConfig
    from animegan.models import build_generator

    config = TrainConfig(**TINY, seed=seed)
    model = build_generator(config)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.endswith("_bn"):
            layer.moving_mean.assign(rng.normal(0.0, 0.05, layer.moving_mean.shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.001, 0.01, layer.moving_variance.shape).astype(np.float32))
    workdir.mkdir(parents=True, exist_ok=True)
    model.save(workdir / "generator.keras")
    (workdir / "generator.json").write_text(json.dumps({"step": step, "config": config.to_dict()}))
    return workdir
