"""Exporting the generator as a TensorFlow SavedModel that serves `noise -> images uint8`.

The SavedModel holds plain TensorFlow functions and variables: TensorFlow alone
loads and runs it (TF Serving, `tf.saved_model.load`); animegan is not needed.

    serving_default (also "serve"):  noise float32 [batch, noise_dim]  ->  images uint8 [batch, 64, 64, 3]

`export.json` beside it records the generator's step and noise size, and how
`animegan generate` draws the noise of image i, so outside callers can reproduce it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from animegan import storage
from animegan.generation import find_generator, load_generator_from

SIGNATURE = "serving_default"
INPUT_NAME = "noise"
OUTPUT_NAME = "images"
INFO_NAME = "export.json"


@dataclass(frozen=True)
class ExportInfo:
    out: str
    step: int
    noise_dim: int
    source: str


def export_saved_model(workdir: str, out: str) -> ExportInfo:
    """Writes the newest generator of `workdir` as a SavedModel folder at `out` (local or remote URL)."""
    import keras
    import tensorflow as tf

    out = storage.absolute(out)
    _check_target(out)
    source = find_generator(workdir)
    generator = load_generator_from(source)
    model = generator.model

    def serve(noise):
        images = model(noise, training=False)
        # tf.round rounds half to even, as np.rint in the package's to_uint8: the same bytes.
        pixels = tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0)
        return {OUTPUT_NAME: tf.cast(pixels, tf.uint8)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also published as "serving_default", the name TF Serving calls.
    archive.add_endpoint(name="serve", fn=serve,
                         input_signature=[tf.TensorSpec([None, generator.noise_dim], tf.float32, name=INPUT_NAME)])
    info = ExportInfo(out, source.step, generator.noise_dim, source.url)
    document = {
        "signature": SIGNATURE, "inputs": {INPUT_NAME: f"float32 [batch, {generator.noise_dim}]"},
        "outputs": {OUTPUT_NAME: "uint8 [batch, 64, 64, 3]"}, "step": source.step, "source": source.url,
        "noise_dim": generator.noise_dim,
        "noise": "standard normal; `animegan generate --seed S` draws image i's noise as "
                 "numpy.random.default_rng([S, i]).standard_normal(noise_dim).astype(float32)",
    }

    # Written to a local folder first: TensorFlow writes SavedModels through its own file
    # systems, not fsspec, and a half-written export must never sit at `out`.
    parent = os.path.dirname(out) if storage.is_local(out) else None
    if parent:
        os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".animegan-export-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        with open(os.path.join(staging, INFO_NAME), "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _check_target(out: str) -> None:
    """Refuses to write over anything but an earlier export."""
    names = storage.list_dir(out)
    if names and "saved_model.pb" not in names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(f"{out} exists and is not a SavedModel export (it holds {shown}); "
                         f"choose an empty or new folder")


def _publish(staging: str, out: str) -> None:
    if storage.is_local(out):
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(staging, out)
        return
    for folder, _, files in os.walk(staging):
        for name in files:
            local = os.path.join(folder, name)
            relative = os.path.relpath(local, staging).replace(os.sep, "/")
            storage.upload_file(local, storage.join(out, relative))
