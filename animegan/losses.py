"""The adversarial losses and the R1 penalty, per example, so the step can average them over the global batch.

- "bce": the original GAN loss with the generator's non-saturating form
  (Goodfellow et al., 2014): D minimises softplus(-real) + softplus(fake) (i.e.
  binary cross-entropy with labels 1 and 0, from logits), G minimises
  softplus(-fake).
- "hinge": D minimises relu(1 - real) + relu(1 + fake), G minimises -fake
  (Lim & Ye, 2017; SNGAN, BigGAN).

Every function returns one value per example: the caller divides the sum by
the global batch (`tf.nn.compute_average_loss`), which keeps the gradient the
same on 1 or N replicas.
"""

from __future__ import annotations

import tensorflow as tf

LOSSES = ("bce", "hinge")


def _flat(logits: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(logits, tf.float32), [-1])


def discriminator_loss(kind: str, real_logits: tf.Tensor, fake_logits: tf.Tensor,
                       real_label: float = 1.0) -> tf.Tensor:
    """Per-example discriminator loss on a real and a generated image (paired by position)."""
    real, fake = _flat(real_logits), _flat(fake_logits)
    if kind == "bce":
        # One-sided label smoothing: real images are labelled real_label (< 1), generated ones 0.
        real_term = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(real), real_label), logits=real)
        return real_term + tf.nn.softplus(fake)
    if kind == "hinge":
        return tf.nn.relu(1.0 - real) + tf.nn.relu(1.0 + fake)
    raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")


def generator_loss(kind: str, fake_logits: tf.Tensor) -> tf.Tensor:
    """Per-example generator loss on generated images."""
    fake = _flat(fake_logits)
    if kind == "bce":
        return tf.nn.softplus(-fake)
    if kind == "hinge":
        return -fake
    raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")


def r1_penalty(real_logits: tf.Tensor, real_images: tf.Tensor, tape: tf.GradientTape) -> tf.Tensor:
    """Per-example squared norm of dD(x)/dx at real images (Mescheder et al., 2018), from a tape that watched them.

    The caller scales it by gamma / 2 (and by the lazy interval when it runs
    every k steps, as StyleGAN2 does).
    """
    # The logits themselves are the target (the tape sums them): ops applied to them after the
    # tape stopped recording would not connect to the images.
    gradients = tape.gradient(real_logits, real_images)
    return tf.reduce_sum(tf.square(tf.cast(gradients, tf.float32)), axis=[1, 2, 3])
