"""Differentiable augmentation at the discriminator's input (DiffAugment, Zhao et al., 2020).

The same kind of random transform is applied to every image the discriminator
sees, real or generated, and the generator's gradient flows back through it.
The discriminator then cannot memorise the few thousand real images, and,
unlike augmenting real images only, the augmentation cannot leak into what the
generator learns to draw (rotated, edge-smeared faces).

Policies, as in the paper's reference code, on images in [-1, 1]:
- color: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) about the pixel's
  mean over channels), contrast (x U(0.5, 1.5) about the image's mean);
- translation: a shift by up to 1/8 of the size in each axis, zero padded;
- cutout: a square of half the size, at a random place, set to zero.

Randomness is stateless: `seed` (an int [2] tensor) fixes every draw, so a
step's augmentation depends only on (seed, step, replica), on any device.
"""

from __future__ import annotations

import tensorflow as tf

from animegan.config import DIFFAUGMENT_POLICIES as POLICIES

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def diff_augment(images: tf.Tensor, policy: tuple[str, ...], seed: tf.Tensor) -> tf.Tensor:
    """Applies the policy's transforms, in order, to a float batch [B, H, W, C]."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=len(POLICIES))
    for name in policy:
        transform = {"color": color, "translation": translation, "cutout": cutout}[name]
        images = transform(images, seeds[POLICIES.index(name)])
    return images


def color(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    dtype = images.dtype
    brightness = tf.cast(tf.random.stateless_uniform([batch, 1, 1, 1], seeds[0]) - 0.5, dtype)
    images = images + brightness
    saturation = tf.cast(tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1]) * 2.0, dtype)
    mean = tf.reduce_mean(images, axis=3, keepdims=True)
    images = (images - mean) * saturation + mean
    contrast = tf.cast(tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2]) + 0.5, dtype)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return (images - mean) * contrast + mean


def translation(images: tf.Tensor, seed: tf.Tensor, ratio: float = TRANSLATION_RATIO) -> tf.Tensor:
    """Shifts each image by whole pixels (at most ratio x size), filling with zeros."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    shift_y = _uniform_int(seeds[0], batch, tf.cast(tf.cast(height, tf.float32) * ratio + 0.5, tf.int32))
    shift_x = _uniform_int(seeds[1], batch, tf.cast(tf.cast(width, tf.float32) * ratio + 0.5, tf.int32))
    # Output pixel (y, x) reads input pixel (y - shift_y, x - shift_x), or zero outside the image.
    rows = tf.range(height)[None, :] - shift_y[:, None]  # [B, H]
    columns = tf.range(width)[None, :] - shift_x[:, None]  # [B, W]
    row_inside = (rows >= 0) & (rows < height)
    column_inside = (columns >= 0) & (columns < width)
    images = tf.gather(images, tf.clip_by_value(rows, 0, height - 1), axis=1, batch_dims=1)
    images = tf.gather(images, tf.clip_by_value(columns, 0, width - 1), axis=2, batch_dims=1)
    inside = tf.cast(row_inside[:, :, None, None] & column_inside[:, None, :, None], images.dtype)
    return images * inside


def cutout(images: tf.Tensor, seed: tf.Tensor, ratio: float = CUTOUT_RATIO) -> tf.Tensor:
    """Zeroes one square of ratio x size per image, centred anywhere (it may stick out of the image)."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    size_y = tf.cast(tf.cast(height, tf.float32) * ratio + 0.5, tf.int32)
    size_x = tf.cast(tf.cast(width, tf.float32) * ratio + 0.5, tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    # Centres as in the reference code: offset in [0, size + (1 - size % 2)), then shifted by half the square.
    centre_y = tf.random.stateless_uniform([batch], seeds[0], 0, height + (1 - size_y % 2), tf.int32)
    centre_x = tf.random.stateless_uniform([batch], seeds[1], 0, width + (1 - size_x % 2), tf.int32)
    rows = tf.range(height)[None, :] - (centre_y[:, None] - size_y // 2)
    columns = tf.range(width)[None, :] - (centre_x[:, None] - size_x // 2)
    in_rows = (rows >= 0) & (rows < size_y)
    in_columns = (columns >= 0) & (columns < size_x)
    cut = in_rows[:, :, None, None] & in_columns[:, None, :, None]
    return images * tf.cast(tf.logical_not(cut), images.dtype)


def _uniform_int(seed: tf.Tensor, batch: tf.Tensor, limit: tf.Tensor) -> tf.Tensor:
    """Integers uniform in [-limit, limit], one per image."""
    return tf.random.stateless_uniform([batch], seed, -limit, limit + 1, tf.int32)
