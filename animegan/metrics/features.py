"""Inception-v3 pool3 features (2048-d) and classifier logits of images, computed the standard way.

Images (uint8, any size; animegan's are 64x64) reach the network exactly as
the reference FID implementations prepare them (fid_inception.scaled_inputs:
a bilinear resize to 299x299 without half-pixel centres, then (x - 128) / 128)
and run through the FID Inception network (fid_inception.py) in inference
mode. The pool features are the global average pool of the last block; when
the weights have the classifier, one pass gives the 1008 logits too.

Weights are never downloaded during a run (training machines often have no
internet); `--inception-weights` is one of:
- "fid" (the default): the standard FID network, from the cache that
  `animegan fid-weights` fills (fid_weights.py). Figures are comparable with
  published FID and KID (at the same sample size).
- a local path or URL (gs://...) of a copy of that cache folder, for machines
  without the cache.
- "random": a randomly initialised network of the same structure, identical
  in every process (its weights come from numpy generators keyed by seed and
  weight position), for offline runs and tests. Figures computed with it are
  labelled as not comparable with published FID.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from animegan import storage
from animegan.metrics.feature_set import FeatureSet
from animegan.metrics.fid_weights import (FILL_COMMAND, MANIFEST_FILE, WEIGHTS_FILE, Manifest, cache_folder,
                                          read_manifest)

BATCH_SIZE = 50

FID = "fid"
RANDOM = "random"
RANDOM_SEED = 0
RANDOM_LABEL = f"random-seed{RANDOM_SEED} (not comparable with published FID)"
# Bump when the random initialisation or the network changes: cached real statistics are keyed by it.
RANDOM_IDENTITY = f"random-seed{RANDOM_SEED}-he-normal-fid-inception-v2"
FID_LABEL = "FID Inception 2015-12-05 (standard; comparable with published FID)"


@dataclass(frozen=True)
class WeightsLocation:
    """A folder (local or URL) holding converted FID weights and their manifest."""

    folder: str
    manifest: Manifest

    @property
    def weights_url(self) -> str:
        return storage.join(self.folder, WEIGHTS_FILE)


def locate_weights(spec: str) -> WeightsLocation | None:
    """Where the weights for `spec` are; None for the random network.

    Cheap (reads one small JSON file, no TensorFlow), so the driver can check it before a run starts.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("--inception-weights is empty; give fid, random, or a copy of the FID weights folder")
    if spec == RANDOM:
        return None
    if spec == "imagenet":
        raise ValueError(f"--inception-weights imagenet is gone: Keras's ImageNet InceptionV3 is not the network "
                         f"published FIDs use; use fid (run `{FILL_COMMAND}` once) or random")
    if spec == FID:
        folder = cache_folder()
    else:
        folder = storage.absolute(spec)
        # A path to one of the folder's files names the folder.
        if folder.endswith((f"/{MANIFEST_FILE}", f"/{WEIGHTS_FILE}")):
            folder = folder.rsplit("/", 1)[0]
    return WeightsLocation(folder, read_manifest(folder))


class InceptionExtractor:
    """Features of uint8 images [N, H, W, 3] from one FID Inception network; the network is built on first use."""

    def __init__(self, weights: str = FID, batch_size: int = BATCH_SIZE):
        if batch_size <= 0:
            raise ValueError(f"the feature batch size must be a positive integer, got {batch_size}")
        self.spec = weights
        self.location = locate_weights(weights)
        self.batch_size = batch_size
        self._run: Callable | None = None

    @property
    def is_random(self) -> bool:
        return self.location is None

    @functools.cached_property
    def local_path(self) -> str:
        """The weights file on local disk (a remote file is copied once per process), checked against its manifest."""
        if self.location is None:
            raise ValueError("the random extractor has no weights file")
        url = self.location.weights_url
        if storage.is_local(url):
            local = url
        else:
            directory = tempfile.mkdtemp(prefix="animegan-inception-")
            atexit.register(shutil.rmtree, directory, True)
            local = os.path.join(directory, WEIGHTS_FILE)
            fs, path = storage.filesystem(url)
            fs.get_file(path, local)
        if not os.path.isfile(local) or storage.sha256_of_file(local) != self.location.manifest.weights_sha256:
            raise ValueError(f"{url} is missing or does not match its manifest's SHA-256 (corrupted or partly "
                             f"copied); run `{FILL_COMMAND}` again")
        return local

    @property
    def identity(self) -> str:
        """What cached features are keyed by: the exact network, not just its name."""
        if self.location is None:
            return RANDOM_IDENTITY
        return f"fid-inception-2015-12-05:{self.location.manifest.content_sha256}"

    @property
    def label(self) -> str:
        """Written next to every figure, so a number always says which network produced it."""
        return RANDOM_LABEL if self.is_random else FID_LABEL

    @property
    def comparable(self) -> bool:
        """True for the standard FID network (the only weights `animegan fid-weights` accepts)."""
        return not self.is_random

    @property
    def has_classifier(self) -> bool:
        return True if self.location is None else self.location.manifest.has_classifier

    def extract(self, images: np.ndarray, log: Callable[[str], None] | None = None) -> FeatureSet:
        """Pool features (and logits when the classifier is there) of uint8 images [N, H, W, 3]."""
        images = check_images(images)
        run = self._compiled()
        pools, logits = [], []
        last_report = time.monotonic()
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            count = len(batch)
            if count < self.batch_size:
                # Pad to the traced batch shape (inference mode: images do not interact), then trim.
                padding = np.zeros((self.batch_size - count,) + batch.shape[1:], np.uint8)
                batch = np.concatenate([batch, padding])
            outputs = run(batch)
            pools.append(outputs[0].numpy()[:count])
            if len(outputs) > 1:
                logits.append(outputs[1].numpy()[:count])
            if log and time.monotonic() - last_report > 10:
                log(f"  Inception features: {start + count}/{len(images)} images")
                last_report = time.monotonic()
        return FeatureSet(np.concatenate(pools), np.concatenate(logits) if logits else None, self.label)

    def _compiled(self) -> Callable:
        if self._run is None:
            import tensorflow as tf

            from animegan.metrics.fid_inception import scaled_inputs

            model = self.build()

            @tf.function
            def run(images):
                outputs = model(scaled_inputs(images), training=False)
                return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

            self._run = run
        return self._run

    def build(self):
        """The Keras network with this extractor's weights (from scaled 299x299 inputs to features, logits)."""
        from animegan.metrics.fid_inception import build_network, content_digest, model_weights

        network = build_network(with_logits=self.has_classifier)
        if self.is_random:
            seeded_initialisation(network, RANDOM_SEED)
            return network
        network.load_weights(self.local_path)
        # Keras files load by layer order: check that every layer got the very values that were converted.
        if content_digest(model_weights(network)) != self.location.manifest.content_sha256:
            raise ValueError(f"the weights in {self.location.folder} do not load into this version's FID network "
                             f"as converted; run `{FILL_COMMAND}` again")
        return network


def seeded_initialisation(model, seed: int) -> None:
    """Overwrites every weight from numpy generators keyed by (seed, position of the weight).

    Keras's own initialisers draw from a process-global seed and layer names
    depend on what was built before, so neither is reproducible across
    processes; the position of a weight in `model.weights` is.
    """
    for position, variable in enumerate(model.weights):
        kind = variable.path.rsplit("/", 1)[-1]
        shape = tuple(variable.shape)
        if kind == "kernel":
            rng = np.random.default_rng([seed, position])
            # He-normal keeps activations of order 1 through ~100 ReLU layers: features neither vanish nor explode.
            scale = np.float32(math.sqrt(2.0 / math.prod(shape[:-1])))
            value = rng.standard_normal(shape, dtype=np.float32) * scale
        elif kind in ("moving_variance", "gamma"):
            value = np.ones(shape, np.float32)
        elif kind in ("bias", "beta", "moving_mean"):
            value = np.zeros(shape, np.float32)
        else:
            raise RuntimeError(f"no seeded initialisation for weight {variable.path}")
        variable.assign(value)


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images for Inception features must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images for Inception features must be [count, height, width, 3], got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to compute Inception features of")
    return images
