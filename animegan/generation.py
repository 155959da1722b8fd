"""Loading a trained generator from a workdir, and turning seeds into images deterministically.

Image i's noise depends only on (seed, i), the generator runs in inference mode
(batch-norm moving statistics), and it always runs on the same aligned batch for
image i, so image i is the same bytes whatever the number of workers or the range
of images they are given. Across batch sizes it is the same image up to the float
rounding of the kernels (in practice the same bytes on CPU; see
tests/test_generation_scale.py).
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
from animegan.config import IMAGE_SIZE
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


@dataclass(frozen=True)
class GeneratorSource:
    """Which generator of a workdir to load, decided once so that every worker loads the same one."""

    kind: str  # "exported" (generator.keras) or "checkpoint" (its EMA generator)
    url: str
    step: int


def find_generator(workdir: str) -> GeneratorSource:
    """The newest generator in a workdir: the exported generator.keras, or the latest checkpoint's EMA."""
    from animegan import checkpoint as checkpoints

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
        return GeneratorSource("exported", layout.generator, exported_step)
    return GeneratorSource("checkpoint", latest, latest_step)


def load_generator(workdir: str) -> LoadedGenerator:
    """The newest generator in a workdir (see find_generator)."""
    return load_generator_from(find_generator(workdir))


def load_generator_from(source: GeneratorSource) -> LoadedGenerator:
    import keras

    from animegan import checkpoint as checkpoints
    from animegan.config import TrainConfig
    from animegan.models import build_generator

    if source.kind == "exported":
        directory = tempfile.mkdtemp(prefix="animegan-load-")
        try:
            local = os.path.join(directory, "generator.keras")
            if storage.is_local(source.url):
                shutil.copyfile(source.url, local)
            else:
                fs, path = storage.filesystem(source.url)
                fs.get_file(path, local)
            # safe_mode refuses to deserialise code (lambdas), so a shared model file cannot run any.
            model = keras.saving.load_model(local, compile=False, safe_mode=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return LoadedGenerator(model, source.step, source.url, int(model.input_shape[-1]))

    local = checkpoints.download(source.url)
    try:
        config = TrainConfig.from_saved(checkpoints.read_state(source.url)["config"])
        model = build_generator(config)
        model.load_weights(os.path.join(local, "ema_generator.weights.h5"))
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return LoadedGenerator(model, source.step, source.url, config.noise_dim)


def generate_images(generator: LoadedGenerator, seed: int, indices: Sequence[int],
                    batch_size: int = 64) -> np.ndarray:
    """uint8 [len(indices), 64, 64, 3] images for the given indices (any order, repeats allowed).

    The generator only ever runs on whole batches aligned to multiples of batch_size
    ([0, B), [B, 2B), ...; the last one padded with the images that would follow), so
    image i always comes out of the very same generator call, with the same shape,
    whichever other images are asked for: the bytes do not depend on how a job
    splits its work. The price is a partial batch's worth of extra work at the ends
    of a range.
    """
    from animegan.data.pipeline import to_uint8

    if batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size}")
    indices = [int(index) for index in indices]
    if any(index < 0 for index in indices):
        raise ValueError(f"image indices must not be negative, got {min(indices)}")
    positions_by_batch: dict[int, list[int]] = {}
    for position, index in enumerate(indices):
        positions_by_batch.setdefault(index // batch_size, []).append(position)

    images = np.zeros((len(indices), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for batch_number, positions in sorted(positions_by_batch.items()):
        first = batch_number * batch_size
        noise = noise_for(seed, range(first, first + batch_size), generator.noise_dim)
        batch = to_uint8(generator.model(noise, training=False))
        for position in positions:
            images[position] = batch[indices[position] - first]
    return images
