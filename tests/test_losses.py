"""Adversarial losses and the R1 penalty: values on tiny cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from animegan import losses


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_is_binary_cross_entropy_from_logits():
    real, fake = tf.constant([[2.0], [-1.0]]), tf.constant([[0.5], [-3.0]])
    values = losses.discriminator_loss("bce", real, fake).numpy()
    # -log(sigmoid(r)) - log(1 - sigmoid(f)) = softplus(-r) + softplus(f)
    expected = [softplus(-2.0) + softplus(0.5), softplus(1.0) + softplus(-3.0)]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    np.testing.assert_allclose(losses.generator_loss("bce", fake).numpy(), [softplus(-0.5), softplus(3.0)], rtol=1e-6)


def test_bce_with_label_smoothing_labels_real_images_below_one():
    value = losses.discriminator_loss("bce", tf.constant([0.0]), tf.constant([0.0]), real_label=0.9).numpy()
    # At logit 0 every label costs ln 2.
    assert value[0] == pytest.approx(2 * math.log(2), rel=1e-6)
    value = losses.discriminator_loss("bce", tf.constant([3.0]), tf.constant([-30.0]), real_label=0.9).numpy()
    expected = -(0.9 * math.log(1 / (1 + math.exp(-3.0))) + 0.1 * math.log(1 - 1 / (1 + math.exp(-3.0))))
    assert value[0] == pytest.approx(expected + softplus(-30.0), rel=1e-5)


def test_hinge_losses():
    real, fake = tf.constant([2.0, 0.25, -1.0]), tf.constant([-2.0, 0.5, 1.0])
    values = losses.discriminator_loss("hinge", real, fake).numpy()
    # relu(1 - r) + relu(1 + f)
    np.testing.assert_allclose(values, [0.0 + 0.0, 0.75 + 1.5, 2.0 + 2.0], rtol=1e-6)
    np.testing.assert_allclose(losses.generator_loss("hinge", fake).numpy(), [2.0, -0.5, -1.0], rtol=1e-6)


def test_unknown_loss_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown loss 'wasserstein'; choose from bce, hinge"):
        losses.generator_loss("wasserstein", tf.constant([0.0]))


def test_r1_penalty_is_the_squared_input_gradient_of_the_logit():
    # D(x) = sum(w * x) has gradient w at every x, so the penalty is sum(w^2) per image.
    weights = tf.constant(np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1))
    images = tf.constant(np.random.default_rng(0).standard_normal((3, 2, 2, 1)).astype(np.float32))
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(images)
        logits = tf.reduce_sum(images * weights, axis=[1, 2, 3])[:, None]
    penalty = losses.r1_penalty(logits, images, tape).numpy()
    np.testing.assert_allclose(penalty, [1 + 4 + 9 + 16] * 3, rtol=1e-6)


def test_r1_penalty_of_a_quadratic_discriminator():
    # D(x) = sum(x^2) / 2 has gradient x: the penalty is |x|^2.
    images = tf.constant([[[[1.0], [2.0]], [[0.0], [-2.0]]]])
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(images)
        logits = tf.reduce_sum(tf.square(images), axis=[1, 2, 3]) / 2.0
    assert losses.r1_penalty(logits, images, tape).numpy()[0] == pytest.approx(9.0)
