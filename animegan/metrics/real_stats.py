"""Features of real images, computed once per (data listing, extractor) and cached as an .npz file.

The cache key hashes the source URL, the exact list of items, the extractor's
identity (the md5 of its weights file, or the random network's seed and
version) and the preprocessing version; so a changed dataset, another split or
another network gets a file of its own, and evaluation during training reads
the reference images once per run, not at every evaluation. The file holds the
pool features (for KID), their mean and covariance (for FID) and the logits.

Real images are read and decoded exactly as training reads them (64x64, centre
crop, area resize, no augmentation) and rounded to uint8, as generated images
are, so both sides reach Inception through the same path.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from typing import Callable, Sequence

import numpy as np

from animegan import storage
from animegan.data.sources import ImageSource
from animegan.metrics.feature_set import FeatureSet
from animegan.metrics.features import InceptionExtractor

# Bump when decoding or resizing changes: old cached features then no longer match.
PREPROCESSING_VERSION = "decode64-uint8/bilinear299-no-half-pixel/minus128-over128/v2"


def cache_key(source_url: str, items: Sequence[str], extractor_identity: str) -> str:
    listing = hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()
    document = {"source": source_url, "items": len(items), "items_sha256": listing,
                "extractor": extractor_identity, "preprocessing": PREPROCESSING_VERSION}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()


def cache_url(cache_dir: str, key: str) -> str:
    return storage.join(cache_dir, f"real-{key[:24]}.npz")


def read_images(source: ImageSource, items: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """uint8 [N, 64, 64, 3] of the items that can be read and decoded, in order, and why others were skipped."""
    import tensorflow as tf

    from animegan.data.decode import decode_image, problem_with

    skipped: list[str] = []

    def encoded():
        for item, data in source.read(list(items)):
            problem = f"read failed: {data}" if isinstance(data, Exception) else problem_with(data)
            if problem:
                skipped.append(f"{item}: {problem}")
                continue
            yield data

    dataset = tf.data.Dataset.from_generator(encoded, output_signature=tf.TensorSpec([], tf.string))
    # Decoding is per image and CPU-bound: in parallel, as in training.
    dataset = dataset.map(decode_image, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(256).prefetch(tf.data.AUTOTUNE)
    batches = [batch.numpy() for batch in dataset]
    images = np.concatenate(batches) if batches else np.zeros((0, 64, 64, 3), np.uint8)
    return images, skipped


def real_features(
    source: ImageSource,
    items: Sequence[str],
    extractor: InceptionExtractor,
    cache_dir: str | None,
    log: Callable[[str], None] = print,
) -> FeatureSet:
    """Features of `items` of `source`: from the cache in `cache_dir` when there, else computed and cached."""
    if not items:
        raise ValueError(f"no real images to compare with (empty reference set from {source.url})")
    key = cache_key(source.url, items, extractor.identity)
    url = cache_url(cache_dir, key) if cache_dir else None
    if url and storage.exists(url):
        try:
            features, stored_key = FeatureSet.from_bytes(storage.read_bytes(url))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            log(f"Ignoring an unreadable real-statistics cache {url} ({error}); computing it again")
        else:
            if stored_key == key and features.extractor == extractor.label:
                return features
            log(f"Ignoring {url}: it was made for another listing or network; computing it again")

    started = time.perf_counter()
    log(f"Computing Inception features of {len(items)} real images from {source.url} "
        f"({extractor.label}); once{f', cached at {url}' if url else ''}")
    images, skipped = read_images(source, items)
    if skipped:
        log(f"  skipped {len(skipped)} unreadable image(s), e.g. {'; '.join(skipped[:3])}")
    if len(images) < 2:
        raise ValueError(f"only {len(images)} of the {len(items)} reference images at {source.url} could be read")
    features = extractor.extract(images, log=log)
    features.statistics()  # computed once here, stored with the features
    if url:
        features.save(url, key)
    log(f"  real features of {len(images)} images in {time.perf_counter() - started:.0f} s")
    return features
