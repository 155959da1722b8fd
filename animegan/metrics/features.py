"""Inception-v3 pool3 features (2048-d) and classifier logits of images, computed the standard way.

Images (uint8, any size; animegan's are 64x64) are resized to 299x299
bilinearly from [0, 255], scaled to [-1, 1] by InceptionV3's own
`preprocess_input`, and run through `keras.applications.InceptionV3` in
inference mode. The pool features are the global average pool of the last
block (`include_top=False, pooling="avg"`); when the classifier is there too,
one pass gives both the features and the 1000 ImageNet logits.

Weights are never downloaded here (training machines often have no internet):
- "imagenet": Keras's own ImageNet files, from Keras's cache (`$KERAS_HOME/models`,
  else ~/.keras/models): the full file (FID, KID and Inception Score) or the
  `_notop` file (FID and KID).
- a path or URL (gs://...) of either file, for machines without that cache.
- "random": a randomly initialised network, identical in every process (its
  weights come from numpy generators keyed by seed and weight position), for
  offline runs and tests. Figures computed with it are labelled as not
  comparable with published FID.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
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

INPUT_SIZE = 299
FEATURE_DIMENSIONS = 2048
BATCH_SIZE = 50

RANDOM = "random"
IMAGENET = "imagenet"
RANDOM_SEED = 0
RANDOM_LABEL = f"random-seed{RANDOM_SEED} (not comparable with published FID)"
# Bump when the random initialisation changes: cached real statistics are keyed by it.
RANDOM_IDENTITY = f"random-seed{RANDOM_SEED}-he-normal-v1"
IMAGENET_LABEL = "imagenet (Keras InceptionV3)"

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"


@dataclass(frozen=True)
class KerasWeightsFile:
    """One of the files keras.applications.InceptionV3 downloads, with the md5 Keras checks it against."""

    name: str
    md5: str
    weight_layers: int  # layers holding weights: 94 convolutions + 94 batch norms (+ 1 classifier)

    @property
    def url(self) -> str:
        return _KERAS_URL + self.name


WITH_CLASSIFIER = KerasWeightsFile("inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                                   "9a0d58056eeedaa3f26cb7ebd46da564", 189)
WITHOUT_CLASSIFIER = KerasWeightsFile("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                      "bcbd6486424b2319ff4ef7d526e38f63", 188)


def keras_cache_dirs() -> list[str]:
    """Where Keras keeps downloaded model files, in the order Keras itself picks them."""
    homes = [os.environ["KERAS_HOME"]] if os.environ.get("KERAS_HOME") else []
    homes += [os.path.join(os.path.expanduser("~"), ".keras"), os.path.join(tempfile.gettempdir(), ".keras")]
    return [os.path.join(home, "models") for home in dict.fromkeys(homes)]


def how_to_get_weights() -> str:
    folder = keras_cache_dirs()[0]
    return (f"on a machine with internet, download {WITH_CLASSIFIER.url} (FID, KID and Inception Score) or "
            f"{WITHOUT_CLASSIFIER.url} (FID and KID only), then put it in {folder}/ under the same name, or "
            f"pass --inception-weights /path/to/file.h5 (a gs:// URL works too); "
            f"--inception-weights random runs offline, with figures not comparable with published FID")


def locate_weights(spec: str) -> str | None:
    """The local path or URL of the weights file for `spec`; None for the random network.

    Cheap (no TensorFlow, nothing read), so the driver can check it before a run starts.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("--inception-weights is empty; give imagenet, random, or the path of a weights file")
    if spec == RANDOM:
        return None
    if spec == IMAGENET:
        for folder in keras_cache_dirs():
            for known in (WITH_CLASSIFIER, WITHOUT_CLASSIFIER):
                path = os.path.join(folder, known.name)
                if os.path.isfile(path):
                    return path
        raise ValueError(f"InceptionV3 ImageNet weights are not in Keras's cache ({', '.join(keras_cache_dirs())}) "
                         f"and are never downloaded during a run; {how_to_get_weights()}")
    url = storage.absolute(spec)
    if not url.endswith((".h5", ".hdf5")):
        raise ValueError(f"--inception-weights {spec}: expected imagenet, random, or a Keras .h5 weights file; "
                         f"{how_to_get_weights()}")
    if not storage.exists(url):
        raise ValueError(f"no InceptionV3 weights file at {spec}; {how_to_get_weights()}")
    return url


class InceptionExtractor:
    """Features of uint8 images [N, H, W, 3] from one InceptionV3; the network is built on first use."""

    def __init__(self, weights: str = IMAGENET, batch_size: int = BATCH_SIZE):
        if batch_size <= 0:
            raise ValueError(f"the feature batch size must be a positive integer, got {batch_size}")
        self.spec = weights
        self.url = locate_weights(weights)
        self.batch_size = batch_size
        self._run: Callable | None = None

    @property
    def is_random(self) -> bool:
        return self.url is None

    @functools.cached_property
    def local_path(self) -> str:
        """The weights file on local disk (a remote file is copied once per process)."""
        if self.url is None:
            raise ValueError("the random extractor has no weights file")
        if storage.is_local(self.url):
            return self.url
        directory = tempfile.mkdtemp(prefix="animegan-inception-")
        atexit.register(shutil.rmtree, directory, True)
        local = os.path.join(directory, os.path.basename(self.url))
        fs, path = storage.filesystem(self.url)
        fs.get_file(path, local)
        return local

    @functools.cached_property
    def md5(self) -> str:
        digest = hashlib.md5()
        with open(self.local_path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @functools.cached_property
    def identity(self) -> str:
        """What cached features are keyed by: the exact network, not just its name."""
        return RANDOM_IDENTITY if self.is_random else f"md5:{self.md5}"

    @functools.cached_property
    def label(self) -> str:
        """Written next to every figure, so a number always says which network produced it."""
        if self.is_random:
            return RANDOM_LABEL
        if self.md5 in (WITH_CLASSIFIER.md5, WITHOUT_CLASSIFIER.md5):
            return IMAGENET_LABEL
        return f"weights file {os.path.basename(self.url)} (md5 {self.md5[:12]}; not Keras's ImageNet file)"

    @property
    def comparable(self) -> bool:
        """True only for Keras's ImageNet weights."""
        return self.label == IMAGENET_LABEL

    @functools.cached_property
    def has_classifier(self) -> bool:
        if self.is_random:
            return True
        layers = weight_layer_count(self.local_path)
        if layers not in (WITH_CLASSIFIER.weight_layers, WITHOUT_CLASSIFIER.weight_layers):
            raise ValueError(f"{self.spec} holds weights for {layers} layers, not Keras's InceptionV3 "
                             f"({WITHOUT_CLASSIFIER.weight_layers} without the classifier, "
                             f"{WITH_CLASSIFIER.weight_layers} with it); {how_to_get_weights()}")
        return layers == WITH_CLASSIFIER.weight_layers

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
            import keras
            import tensorflow as tf

            model = self._build()
            preprocess = keras.applications.inception_v3.preprocess_input

            @tf.function
            def run(images):
                pixels = tf.image.resize(tf.cast(images, tf.float32), [INPUT_SIZE, INPUT_SIZE], method="bilinear")
                outputs = model(preprocess(pixels), training=False)
                return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

            self._run = run
        return self._run

    def _build(self):
        import keras

        if self.has_classifier:
            network = keras.applications.InceptionV3(include_top=True, weights=None, classifier_activation=None)
            outputs = [network.get_layer("avg_pool").output, network.output]
        else:
            network = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg")
            outputs = [network.output]
        if self.is_random:
            seeded_initialisation(network, RANDOM_SEED)
        else:
            # Keras's .h5 layout loads by layer order, so layer names (which count up per process) do not matter.
            network.load_weights(self.local_path)
        return keras.Model(network.input, outputs, name="inception_features")


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


def weight_layer_count(path: str) -> int:
    """Layers with weights in a Keras .h5 weights file (read with h5py, not loaded)."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            group = file["model_weights"] if "layer_names" not in file.attrs and "model_weights" in file else file
            names = _chunked_attribute(group, "layer_names")
            return sum(1 for name in names if name in group and len(_chunked_attribute(group[name], "weight_names")))
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 weights file ({error}); {how_to_get_weights()}") from None


def _chunked_attribute(group, name: str) -> list[str]:
    # Keras splits attributes over 64 KB into name0, name1, ... .
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [value.decode("utf8") if isinstance(value, bytes) else str(value) for value in values]


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images for Inception features must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images for Inception features must be [count, height, width, 3], got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to compute Inception features of")
    return images
