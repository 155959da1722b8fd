"""The reference the training step is measured against: the same GAN written the usual keras-io way.

A `keras.Model` subclass with its own `compile` and `train_step`, losses in
`Mean` trackers, trained with `fit()` in a single process, as in keras-io's
`examples/generative/dcgan_overriding_train_step.py`. It does the same work as
animegan's step, so the comparison measures the machinery, not the algorithm:
the same generator and discriminator (built by animegan.models), a
discriminator update on a real and a generated batch scored separately (keras-io
concatenates them into one batch; with batch norm in the discriminator that
would mix real and fake statistics), a generator update on fresh noise, then the
generator's EMA. Kept in benchmarks/ only; benchmarks/train_step.py times it.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


class ReferenceGAN(keras.Model):
    def __init__(self, discriminator: keras.Model, generator: keras.Model, ema_generator: keras.Model,
                 noise_dim: int, ema_decay: float = 0.999, seed: int = 0):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.ema_generator = ema_generator
        self.noise_dim = noise_dim
        self.ema_decay = ema_decay
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")

    @property
    def metrics(self):
        return [self.d_loss_metric, self.g_loss_metric]

    def train_step(self, real_images):
        batch_size = ops.shape(real_images)[0]

        # Train the discriminator: real images towards 1, generated ones towards 0.
        noise = keras.random.normal((batch_size, self.noise_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            generated_images = self.generator(noise, training=True)
            real_logits = self.discriminator(real_images, training=True)
            fake_logits = self.discriminator(generated_images, training=True)
            d_loss = (self.loss_fn(ops.ones_like(real_logits), real_logits)
                      + self.loss_fn(ops.zeros_like(fake_logits), fake_logits))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))

        # Train the generator on fresh noise: its images should be called real.
        noise = keras.random.normal((batch_size, self.noise_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake_logits = self.discriminator(self.generator(noise, training=True), training=True)
            g_loss = self.loss_fn(ops.ones_like(fake_logits), fake_logits)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))

        # The generator's exponential moving average, as animegan keeps it.
        step = ops.cast(self.g_optimizer.iterations, "float32")
        decay = ops.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        for ema_weight, weight in zip(self.ema_generator.weights, self.generator.weights):
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * weight if weight.trainable else weight)

        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}


def build_reference(config) -> ReferenceGAN:
    """The reference GAN for a TrainConfig's model shapes and optimiser settings, compiled."""
    from animegan.models import build_discriminator, build_generator

    generator = build_generator(config)
    ema_generator = build_generator(config, name="ema_generator")
    ema_generator.set_weights(generator.get_weights())
    gan = ReferenceGAN(build_discriminator(config), generator, ema_generator, config.noise_dim,
                       config.ema_decay, config.seed)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(config.resolved_discriminator_lr, beta_1=config.beta1,
                                          beta_2=config.beta2),
        g_optimizer=keras.optimizers.Adam(config.resolved_generator_lr, beta_1=config.beta1,
                                          beta_2=config.beta2),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan
