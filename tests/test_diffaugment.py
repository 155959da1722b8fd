"""DiffAugment: what each transform does to pixels, reproducibility from seeds, gradients, eager and traced."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from animegan.config import parse_diffaugment
from animegan.diffaugment import color, cutout, diff_augment, translation

ALL = ("color", "translation", "cutout")


def batch(count: int = 6, size: int = 16) -> tf.Tensor:
    return tf.random.stateless_uniform([count, size, size, 3], seed=[3, 4], minval=-1, maxval=1)


@pytest.mark.parametrize("traced", [False, True])
def test_same_seed_same_images_other_seed_other_images(traced):
    run = tf.function(diff_augment, autograph=False) if traced else diff_augment
    images = batch()
    first = run(images, ALL, tf.constant([1, 2], tf.int64)).numpy()
    again = run(images, ALL, tf.constant([1, 2], tf.int64)).numpy()
    other = run(images, ALL, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_eager_and_traced_agree():
    images = batch()
    seed = tf.constant([5, 6], tf.int64)
    eager = diff_augment(images, ALL, seed).numpy()
    traced = tf.function(lambda x, s: diff_augment(x, ALL, s), autograph=False)(images, seed).numpy()
    np.testing.assert_allclose(eager, traced, atol=1e-6)


def test_translation_moves_whole_pixels_and_pads_with_zeros():
    images = batch(count=8)
    shifted = translation(images, tf.constant([0, 9], tf.int64)).numpy()
    source = images.numpy()
    for image, result in zip(source, shifted):
        # Find the shift: some (dy, dx) within 1/8 of 16 = 2 pixels reproduces the result exactly.
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = np.zeros_like(image)
                ys, xs = slice(max(dy, 0), 16 + min(dy, 0)), slice(max(dx, 0), 16 + min(dx, 0))
                yt, xt = slice(max(-dy, 0), 16 + min(-dy, 0)), slice(max(-dx, 0), 16 + min(-dx, 0))
                expected[ys, xs] = image[yt, xt]
                if np.array_equal(expected, result):
                    matches.append((dy, dx))
        assert matches, "the result is no whole-pixel shift of the image"


def test_cutout_zeroes_one_square_of_half_the_size_at_most():
    images = tf.ones([16, 16, 16, 3])
    result = cutout(images, tf.constant([2, 2], tf.int64)).numpy()
    for image in result:
        zero = image[..., 0] == 0
        rows, columns = np.nonzero(zero)
        assert zero.sum() <= 64  # an 8x8 square, clipped where it sticks out
        assert zero.sum() > 0
        # The zeros form one axis-aligned rectangle.
        assert zero[rows.min():rows.max() + 1, columns.min():columns.max() + 1].all()
        assert rows.max() - rows.min() < 8 and columns.max() - columns.min() < 8
    assert (result == 0).any(axis=(1, 2, 3)).all()


def test_color_changes_brightness_saturation_and_contrast_within_their_ranges():
    grey = tf.fill([64, 4, 4, 3], 0.2)  # no saturation or contrast to change: only brightness moves it
    result = color(grey, tf.constant([7, 7], tf.int64)).numpy()
    offsets = result[:, 0, 0, 0] - 0.2
    assert np.allclose(result, result[:, :1, :1, :1], atol=1e-6)  # each image stays flat
    assert offsets.min() >= -0.5 - 1e-6 and offsets.max() <= 0.5 + 1e-6
    assert offsets.std() > 0.1  # drawn per image


def test_gradients_flow_through_every_transform():
    images = tf.Variable(batch())
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(diff_augment(images, ALL, tf.constant([1, 1], tf.int64)))
    gradient = tape.gradient(value, images)
    assert gradient is not None and np.isfinite(gradient.numpy()).all() and np.abs(gradient.numpy()).sum() > 0


def test_policies_are_parsed_and_checked():
    assert parse_diffaugment("") == ()
    assert parse_diffaugment(" color , cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown transform\\(s\\) rotate; choose from color, translation, cutout"):
        parse_diffaugment("color,rotate")
    with pytest.raises(ValueError, match="names a transform twice"):
        parse_diffaugment("color,color")
