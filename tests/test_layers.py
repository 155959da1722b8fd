"""The networks' own layers: spectral normalisation and the minibatch standard deviation, by value."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from animegan.layers import MinibatchStdDev, SpectralConv2D


def test_spectral_conv_kernel_has_unit_largest_singular_value_after_power_iterations():
    layer = SpectralConv2D(8, 3, padding="same")
    layer.build((None, 8, 8, 4))
    # A kernel of a known largest singular value, 3 (an unseeded initial one may lie anywhere near 1).
    kernel = np.random.default_rng(0).standard_normal((3, 3, 4, 8)).astype(np.float32)
    kernel *= 3.0 / np.linalg.svd(kernel.reshape(-1, 8), compute_uv=False)[0]
    layer.kernel.assign(kernel)
    for _ in range(30):  # each training call refines u by one power iteration
        layer(tf.zeros([1, 8, 8, 4]), training=True)
    matrix = layer.normalized_kernel().numpy().reshape(-1, 8)
    assert np.linalg.svd(matrix, compute_uv=False)[0] == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(matrix, kernel.reshape(-1, 8) / 3.0, rtol=1e-3, atol=1e-6)
    # The trainable kernel itself is left as the optimizer made it.
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)


def test_spectral_conv_inference_does_not_move_u_and_gradients_reach_the_kernel():
    layer = SpectralConv2D(4, 3, padding="same")
    inputs = tf.random.stateless_normal([2, 6, 6, 3], seed=[1, 2])
    layer(inputs, training=False)
    u = layer.power_u.numpy().copy()
    layer(inputs, training=False)
    np.testing.assert_array_equal(u, layer.power_u.numpy())
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(tf.square(layer(inputs, training=True)))
    gradient = tape.gradient(value, layer.kernel)
    assert gradient is not None and np.abs(gradient.numpy()).sum() > 0
    assert not np.array_equal(u, layer.power_u.numpy())


def test_minibatch_std_appends_the_mean_deviation_of_each_group():
    # 4 images of 1x1x2 features; groups of 2 pair image i with image i + 2.
    values = np.array([1.0, 3.0, 0.0, 0.0, 3.0, 7.0, 4.0, 4.0], np.float32).reshape(4, 1, 1, 2)
    result = MinibatchStdDev(2)(tf.constant(values)).numpy()
    assert result.shape == (4, 1, 1, 3)
    np.testing.assert_array_equal(result[..., :2], values)
    # Group of images 0 and 2: std of (1, 3) = 1, of (3, 7) = 2 -> mean 1.5. Images 1 and 3: all 0 and 4: 2, 2 -> 2.
    np.testing.assert_allclose(result[:, 0, 0, 2], [1.5, 2.0, 1.5, 2.0], atol=1e-3)


def test_minibatch_std_needs_groups_of_two():
    with pytest.raises(ValueError, match="groups of 2 or more images"):
        MinibatchStdDev(1)
