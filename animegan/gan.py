"""The GAN update: one discriminator step and one generator step, correct on 1 or N replicas.

Three rules make the step independent of how many replicas run it:
- losses are summed per replica and divided by the *global* batch
  (`tf.nn.compute_average_loss`), and the optimizer all-reduces gradients by SUM;
- every replica draws the same global noise batch from a stateless seed and
  takes its own slice, so replicas get distinct noise and the noise a given
  example sees does not depend on the number of replicas;
- the metrics are reduced across replicas inside the step, so every worker sees
  identical numbers and makes identical decisions (stop on NaN, checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from animegan import losses, precision
from animegan.config import TrainConfig, parse_diffaugment
from animegan.data.augment import Augmentation, augment_batch
from animegan.data.pipeline import to_unit_range
from animegan.diffaugment import diff_augment
from animegan.models import build_discriminator, build_generator

# Noise vectors behind the EMA generator's batch-norm statistics (make_ema_statistics_refresher).
EMA_STATISTICS_SAMPLES = 256
# Order of the values a step returns.
STEP_METRICS = ("loss/d", "loss/g", "d/real", "d/fake")


@dataclass
class GANState:
    """Everything a checkpoint holds besides the data position."""

    generator: keras.Model
    discriminator: keras.Model
    ema_generator: keras.Model
    generator_optimizer: keras.optimizers.Optimizer
    discriminator_optimizer: keras.optimizers.Optimizer
    step: tf.Variable


def build_state(config: TrainConfig) -> GANState:
    """Models, EMA copy, optimizers (with their slots built) and the step counter.

    The models compute in `config.precision` (their variables stay float32). Call
    inside `strategy.scope()` so that every variable is mirrored.
    """
    with precision.dtype_policy(config.precision):
        generator = build_generator(config)
        discriminator = build_discriminator(config)
        ema_generator = build_generator(config, name="ema_generator")
    ema_generator.set_weights(generator.get_weights())
    generator_optimizer = precision.wrap_optimizer(keras.optimizers.Adam(
        config.resolved_generator_lr, beta_1=config.beta1, beta_2=config.beta2, name="generator_adam"),
        config.precision)
    discriminator_optimizer = precision.wrap_optimizer(keras.optimizers.Adam(
        config.resolved_discriminator_lr, beta_1=config.beta1, beta_2=config.beta2, name="discriminator_adam"),
        config.precision)
    # Build the slots now, so a checkpoint can be restored into them before the first step.
    generator_optimizer.build(generator.trainable_variables)
    discriminator_optimizer.build(discriminator.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return GANState(generator, discriminator, ema_generator, generator_optimizer, discriminator_optimizer, step)


def ema_decay_at(step: tf.Tensor, decay: float) -> tf.Tensor:
    """The EMA decay, warmed up so early samples are not dominated by the random initialisation."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


def update_ema(state: GANState, decay: tf.Tensor) -> None:
    """EMA of the trainable weights; batch-norm statistics are copied as they are.

    Copied statistics belong to the live generator's weights, not to the averaged
    ones (on the real faces that mismatch tints the EMA's samples blue): refresh
    them with `make_ema_statistics_refresher` before the EMA generator is used.
    """
    for ema_weight, weight in zip(state.ema_generator.weights, state.generator.weights):
        if weight.trainable:
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight)
        else:
            ema_weight.assign(weight)


def make_ema_statistics_refresher(state: GANState, config: TrainConfig,
                                  samples: int = EMA_STATISTICS_SAMPLES) -> Callable[[], None]:
    """A function that sets the EMA generator's batch-norm statistics to its own ("standing statistics").

    It runs the EMA generator in training mode on a fixed noise batch and stores
    the batch mean and variance of every batch-norm input as that layer's moving
    statistics, so that inference-mode output matches what the averaged weights
    produce. Deterministic and free of collectives: every worker computes the same
    values, and may call it whenever the others do or not.
    """
    ema = state.ema_generator
    norms = [layer for layer in ema.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(ema.inputs, [layer.input for layer in norms], name="ema_statistics_probe")
    noise = tf.constant(np.random.default_rng([config.seed, 2]).standard_normal(
        (samples, config.noise_dim)).astype(np.float32))

    def refresh() -> None:
        inputs = probe(noise, training=True)
        for layer, values in zip(norms, inputs if isinstance(inputs, (list, tuple)) else [inputs]):
            values = tf.cast(values, tf.float32)
            mean, variance = tf.nn.moments(values, axes=list(range(len(values.shape) - 1)))
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)

    return refresh


def replica_noise(step: tf.Tensor, stream: int, seed: int, global_batch: int, noise_dim: int,
                  local_batch: tf.Tensor) -> tf.Tensor:
    """This replica's slice of the global noise batch for (step, stream)."""
    context = tf.distribute.get_replica_context()
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32) if context else tf.constant(0)
    stateless_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 2 + stream])
    noise = tf.random.stateless_normal([global_batch, noise_dim], seed=stateless_seed)
    start = replica_id * local_batch
    return noise[start:start + local_batch]


def augmentation_seeds(step: tf.Tensor, seed: int, count: int) -> tf.Tensor:
    """[count, 2] stateless seeds for this (step, replica): the real images' and D's input transforms."""
    context = tf.distribute.get_replica_context()
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int64) if context else tf.constant(0, tf.int64)
    base = tf.stack([tf.cast(seed, tf.int64) + 1_000_003 * (replica_id + 1), tf.cast(step, tf.int64)])
    return tf.random.experimental.stateless_split(base, num=count)


def prepare_real_images(pixels: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Pixels (uint8, or float in [0, 255]) -> augmented float32 images in [-1, 1].

    The host hands over uint8 pixels (a quarter of float32's bytes to copy);
    scaling and augmentation run in the step, on the accelerator.
    """
    return to_unit_range(augment_batch(tf.cast(pixels, tf.float32), seed, augmentation))


def make_train_step(state: GANState, config: TrainConfig,
                    strategy: tf.distribute.Strategy) -> Callable[[object], tf.Tensor]:
    """A compiled step: distributed batch of real uint8 pixels -> reduced metrics [len(STEP_METRICS)]."""
    global_batch = config.batch_size
    real_label = 1.0 - config.label_smoothing
    generator, discriminator = state.generator, state.discriminator
    policy = parse_diffaugment(config.diffaugment)
    augmentation = Augmentation(config.flip, config.rotation, config.shift)
    r1_weight = config.r1_gamma / 2.0 * config.r1_every  # lazy: every r1_every steps, weighted by the interval

    def average(per_example: tf.Tensor) -> tf.Tensor:
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

    def discriminator_input(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        # Real and generated images get the same kind of transform, so none of it leaks into G.
        return diff_augment(images, policy, seed) if policy else images

    def discriminator_gradients(real_images: tf.Tensor, noise: tf.Tensor, seeds: tf.Tensor, with_r1: bool):
        with tf.GradientTape() as tape:
            fake_images = generator(noise, training=True)
            real_input = discriminator_input(real_images, seeds[0])
            with tf.GradientTape(watch_accessed_variables=False) as r1_tape:
                r1_tape.watch(real_input)
                real_logits = discriminator(real_input, training=True)
            fake_logits = discriminator(discriminator_input(fake_images, seeds[1]), training=True)
            d_loss = average(losses.discriminator_loss(config.loss, real_logits, fake_logits, real_label))
            total = d_loss
            if with_r1:
                total += r1_weight * average(losses.r1_penalty(real_logits, real_input, r1_tape))
            scaled = state.discriminator_optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, discriminator.trainable_variables)
        return d_loss, gradients, real_logits, fake_logits

    def generator_gradients(noise: tf.Tensor, seed: tf.Tensor):
        # The non-saturating (or hinge) generator loss on fresh noise.
        with tf.GradientTape() as tape:
            fake_images = generator(noise, training=True)
            fake_logits_for_g = discriminator(discriminator_input(fake_images, seed), training=True)
            g_loss = average(losses.generator_loss(config.loss, fake_logits_for_g))
            scaled = state.generator_optimizer.scale_loss(g_loss)
        return g_loss, tape.gradient(scaled, generator.trainable_variables)

    if precision.jit_enabled(config.jit):
        # XLA compiles the forward and backward passes only: the optimizers' all-reduces
        # stay outside, where every strategy supports them.
        discriminator_gradients = tf.function(discriminator_gradients, jit_compile=True)
        generator_gradients = tf.function(generator_gradients, jit_compile=True)

    def apply(optimizer, gradients, variables) -> None:
        gradients = precision.agree_on_finiteness(gradients, optimizer)
        optimizer.apply_gradients(zip(gradients, variables))

    def replica_step(pixels: tf.Tensor) -> tf.Tensor:
        local_batch = tf.shape(pixels)[0]
        step = state.step.read_value()
        seeds = augmentation_seeds(step, config.seed, 4)
        real_images = prepare_real_images(pixels, seeds[0], augmentation)

        noise = replica_noise(step, 0, config.seed, global_batch, config.noise_dim, local_batch)
        if config.r1_gamma > 0:
            # Both branches hold no collective op, so replicas may take them freely; all take the same.
            d_loss, gradients, real_logits, fake_logits = tf.cond(
                step % config.r1_every == 0,
                lambda: discriminator_gradients(real_images, noise, seeds[1:3], True),
                lambda: discriminator_gradients(real_images, noise, seeds[1:3], False))
        else:
            d_loss, gradients, real_logits, fake_logits = discriminator_gradients(real_images, noise, seeds[1:3],
                                                                                  False)
        apply(state.discriminator_optimizer, gradients, discriminator.trainable_variables)

        # The generator is scored by the discriminator just updated, on fresh noise.
        noise = replica_noise(step, 1, config.seed, global_batch, config.noise_dim, local_batch)
        g_loss, gradients = generator_gradients(noise, seeds[3])
        apply(state.generator_optimizer, gradients, generator.trainable_variables)

        d_real = average(tf.sigmoid(tf.reshape(tf.cast(real_logits, tf.float32), [-1])))
        d_fake = average(tf.sigmoid(tf.reshape(tf.cast(fake_logits, tf.float32), [-1])))
        return tf.stack([d_loss, g_loss, d_real, d_fake])

    # No autograph: the step has no Python control flow on tensors, and converting the
    # Keras layers' and optimizers' code cost a third of the first step's tracing.
    @tf.function(autograph=False)
    def train_step(distributed_images) -> tf.Tensor:
        per_replica = strategy.run(replica_step, args=(distributed_images,))
        # One all-reduce for all metrics; every worker gets the same totals.
        totals = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        step = state.step.assign_add(1)
        update_ema(state, ema_decay_at(step, config.ema_decay))
        return totals

    return train_step
