"""Training images as the discriminator sees them (decoded, cropped, augmented), for a look by eye.

The seed notebook showed a grid of augmented images before training; `animegan
data preview` writes that grid to a file and a training run logs it to W&B.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from animegan.data.augment import Augmentation
from animegan.data.sources import ImageSource


def augmented_images(source: ImageSource, items: Sequence[str], count: int, *, seed: int = 0,
                     augmentation: Augmentation = Augmentation()) -> np.ndarray:
    """uint8 [min(count, len(items)), 64, 64, 3]: one batch of the training pipeline, back in [0, 255]."""
    if count <= 0:
        raise ValueError(f"the number of preview images must be positive, got {count}")
    import tensorflow as tf

    from animegan.data.augment import augment_batch
    from animegan.data.pipeline import training_dataset

    # Through the real pipeline, so unreadable files are skipped, and the augmentation
    # the training step applies, not a re-implementation.
    dataset = training_dataset(source, items, batch_size=min(count, len(items)), seed=seed, recorded=False)
    pixels = tf.cast(next(iter(dataset)), tf.float32)
    images = augment_batch(pixels, tf.constant([seed, 0], tf.int64), augmentation)
    return np.clip(np.rint(images.numpy()), 0, 255).astype(np.uint8)
