"""Loading a trained generator from a workdir, and turning seeds into images deterministically.

Image i's noise depends only on (seed, i), and the generator runs in inference
mode (batch-norm moving statistics), so image i is the same whatever the batch
size or the number of workers that produce it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from animegan import storage
from animegan.workdir import RunLayout


@dataclass(frozen=True)
class LoadedGenerator:
    model: object  # keras.Model
    step: int
    source: str  # the file or checkpoint it came from
    noise_dim: int


def noise_for(seed: int, indices: Sequence[int], noise_dim: int) -> np.ndarray:
    """float32 [len(indices), noise_dim]: row k is a function of (seed, indices[k]) alone."""
    return np.stack([np.random.default_rng([seed, int(index)]).standard_normal(noise_dim)
                     for index in indices]).astype(np.float32)


def load_generator(workdir: str) -> LoadedGenerator:
    """The newest generator in a workdir: the exported generator.keras, or the latest checkpoint's EMA."""
    import keras

    from animegan import checkpoint as checkpoints
    from animegan.config import TrainConfig
    from animegan.models import build_generator

    layout = RunLayout(storage.absolute(workdir))
    if not storage.exists(layout.workdir):
        raise ValueError(f"no such workdir: {workdir}")
    exported_step = -1
    if storage.exists(layout.generator) and storage.exists(layout.generator_info):
        exported_step = json.loads(storage.read_text(layout.generator_info))["step"]
    latest = checkpoints.latest_valid(layout.checkpoints, log=lambda message: None)
    latest_step = checkpoints.read_state(latest)["step"] if latest else -1

    if exported_step < 0 and latest is None:
        raise ValueError(f"{workdir} holds neither generator.keras nor a valid checkpoint; train first")
    if exported_step >= latest_step:
        directory = tempfile.mkdtemp(prefix="animegan-load-")
        try:
            local = os.path.join(directory, "generator.keras")
            if storage.is_local(layout.generator):
                shutil.copyfile(layout.generator, local)
            else:
                storage.filesystem(layout.generator)[0].get_file(storage.filesystem(layout.generator)[1], local)
            # safe_mode refuses to deserialise code (lambdas), so a shared model file cannot run any.
            model = keras.saving.load_model(local, compile=False, safe_mode=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return LoadedGenerator(model, exported_step, layout.generator, int(model.input_shape[-1]))

    local = checkpoints.download(latest)
    try:
        config = TrainConfig.from_dict(checkpoints.read_state(latest)["config"])
        model = build_generator(config)
        model.load_weights(os.path.join(local, "ema_generator.weights.h5"))
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return LoadedGenerator(model, latest_step, latest, config.noise_dim)


def generate_images(generator: LoadedGenerator, seed: int, indices: Sequence[int],
                    batch_size: int = 64) -> np.ndarray:
    """uint8 [len(indices), 64, 64, 3] images for the given indices."""
    from animegan.data.pipeline import to_uint8

    batches = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        noise = noise_for(seed, chunk, generator.noise_dim)
        batches.append(to_uint8(generator.model(noise, training=False)))
    return np.concatenate(batches) if batches else np.zeros((0, 64, 64, 3), np.uint8)
