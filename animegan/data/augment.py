"""Augmentation of real images on tensors, equivalent to the seed notebook's ImageDataGenerator
(horizontal flip, rotation, width and height shift, nearest fill).

It runs on whole batches: one projective transform per image, applied by a single
vectorised kernel, which costs far less than per-image Python work.
Seeds are explicit, so the same seed gives the same augmented batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    rotation_degrees: float = 10.0
    shift_fraction: float = 0.1

    @property
    def is_identity(self) -> bool:
        return not self.flip and self.rotation_degrees == 0 and self.shift_fraction == 0


def augment_batch(images: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Randomly flips, rotates and shifts a float batch [B, H, W, C]; seed is an int32/int64 [2]."""
    if augmentation.is_identity:
        return images
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)

    flips = tf.zeros([batch], tf.bool)
    if augmentation.flip:
        flips = tf.random.stateless_uniform([batch], seed=seeds[0]) < 0.5

    if augmentation.rotation_degrees == 0 and augmentation.shift_fraction == 0:
        return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)
    max_angle = augmentation.rotation_degrees * math.pi / 180.0
    angles = tf.random.stateless_uniform([batch], seed=seeds[1], minval=-max_angle, maxval=max_angle)
    shift = augmentation.shift_fraction
    shift_x = tf.random.stateless_uniform([batch], seed=seeds[2], minval=-shift, maxval=shift) * width
    shift_y = tf.random.stateless_uniform([batch], seed=seeds[3], minval=-shift, maxval=shift) * height
    transforms = rotation_shift_transforms(angles, shift_x, shift_y, height, width)
    # The flip is folded into the same transform (sample x' = width - 1 - x), which
    # saves a pass over the batch: the warp is most of the pipeline's CPU time.
    sign = tf.where(flips, -1.0, 1.0)
    transforms = tf.concat([transforms[:, :2] * sign[:, None],
                            (transforms[:, 2] * sign + tf.where(flips, width - 1.0, 0.0))[:, None],
                            transforms[:, 3:]], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",  # ImageDataGenerator's default: edge pixels are repeated
    )


def rotation_shift_transforms(angles, shift_x, shift_y, height, width) -> tf.Tensor:
    """[B, 8] projective transforms mapping each output pixel to the input pixel it samples.

    Rotation by `angles` (radians) about the image centre, then a shift by
    (shift_x, shift_y) pixels.
    """
    cos, sin = tf.cos(angles), tf.sin(angles)
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = cos, sin
    a2 = centre_x - cos * centre_x - sin * centre_y - shift_x
    b0, b1 = -sin, cos
    b2 = centre_y + sin * centre_x - cos * centre_y - shift_y
    zeros = tf.zeros_like(angles)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
