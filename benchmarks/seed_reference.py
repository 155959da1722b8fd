"""The seed notebook's recipe, written plainly in Keras 3: the baseline animegan's quality is measured against.

    .venv/bin/python benchmarks/seed_reference.py --data /tmp/train.zip --steps 600 --out /tmp/seed   # ~40 min on 2 AVX2 cores

The recipe, as the notebook animegan grew from trained it:
- noise 300; generator Dense -> reshape 4x4x512 (no batch norm or activation
  there) -> Conv2DTranspose 256/128/64 (kernel 4, stride 2, with biases), each
  followed by batch norm (Keras defaults) and LeakyReLU(0.2) -> Conv2DTranspose
  to 3 channels -> tanh;
- discriminator Conv 64/128/256/512 (kernel 4, stride 2), each with batch norm
  and LeakyReLU(0.2) -> flatten -> one logit;
- all weights N(0, 0.02); binary cross-entropy from logits; Adam 2e-4,
  beta1 0.5 for both networks;
- a `keras.Model` with its own `train_step` (the discriminator on a real and a
  generated batch, then the generator on fresh noise), driven by `fit()`;
- real images augmented by tf-keras's `ImageDataGenerator` (rotation 10
  degrees, shifts 0.1, horizontal flips), scaled to [-1, 1];
- samples drawn from the live generator in inference mode.

It writes, under --out: `generator-<step>.weights.h5` at each --snapshot step
(and at the end), `samples-<step>.png` (8x8 grid on fixed noise) and
`losses.jsonl` (mean losses every --log-every steps). benchmarks/quality.py
runs it as its baseline (a); animegan's `--preset seed-notebook` is the same
recipe run through animegan's own distributed step and pipeline.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile

import numpy as np

NOISE_DIM = 300
IMAGE_SIZE = 64
GRID_NOISE_SEED = 1234


def build_seed_generator(noise_dim: int = NOISE_DIM, seed: int = 0):
    import keras
    from keras import layers

    def init(offset: int):
        return keras.initializers.RandomNormal(0.0, 0.02, seed=seed * 100 + offset)

    noise = keras.Input(shape=(noise_dim,))
    x = layers.Dense(4 * 4 * 512, kernel_initializer=init(0))(noise)
    x = layers.Reshape((4, 4, 512))(x)
    for index, filters in enumerate([256, 128, 64]):
        x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", kernel_initializer=init(index + 1))(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(negative_slope=0.2)(x)
    x = layers.Conv2DTranspose(3, 4, strides=2, padding="same", kernel_initializer=init(9))(x)
    images = layers.Activation("tanh")(x)
    return keras.Model(noise, images, name="seed_generator")


def build_seed_discriminator(seed: int = 0):
    import keras
    from keras import layers

    def init(offset: int):
        return keras.initializers.RandomNormal(0.0, 0.02, seed=seed * 100 + 50 + offset)

    images = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    x = images
    for index, filters in enumerate([64, 128, 256, 512]):
        x = layers.Conv2D(filters, 4, strides=2, padding="same", kernel_initializer=init(index))(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(negative_slope=0.2)(x)
    x = layers.Flatten()(x)
    logits = layers.Dense(1, kernel_initializer=init(9))(x)
    return keras.Model(images, logits, name="seed_discriminator")


def make_seed_gan(noise_dim: int = NOISE_DIM, seed: int = 0):
    import keras
    import tensorflow as tf

    class SeedGAN(keras.Model):
        def __init__(self):
            super().__init__()
            self.generator = build_seed_generator(noise_dim, seed)
            self.discriminator = build_seed_discriminator(seed)
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.d_loss_metric = keras.metrics.Mean(name="d_loss")
            self.g_loss_metric = keras.metrics.Mean(name="g_loss")

        def compile(self):
            super().compile()
            self.d_optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)
            self.g_optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)
            self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

        @property
        def metrics(self):
            return [self.d_loss_metric, self.g_loss_metric]

        def train_step(self, real_images):
            batch_size = tf.shape(real_images)[0]
            noise = keras.random.normal((batch_size, noise_dim), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                fake_images = self.generator(noise, training=True)
                real_logits = self.discriminator(real_images, training=True)
                fake_logits = self.discriminator(fake_images, training=True)
                d_loss = (self.loss_fn(tf.ones_like(real_logits), real_logits)
                          + self.loss_fn(tf.zeros_like(fake_logits), fake_logits))
            gradients = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(gradients, self.discriminator.trainable_weights))

            noise = keras.random.normal((batch_size, noise_dim), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                fake_logits = self.discriminator(self.generator(noise, training=True), training=True)
                g_loss = self.loss_fn(tf.ones_like(fake_logits), fake_logits)
            gradients = tape.gradient(g_loss, self.generator.trainable_weights)
            self.g_optimizer.apply_gradients(zip(gradients, self.generator.trainable_weights))

            self.d_loss_metric.update_state(d_loss)
            self.g_loss_metric.update_state(g_loss)
            return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}

    gan = SeedGAN()
    gan.compile()
    return gan


def load_zip_images(path: str) -> np.ndarray:
    """Every image of a zip as uint8 [N, 64, 64, 3], in sorted name order."""
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith((".jpg", ".jpeg", ".png")))
        images = [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)))
                  for name in names]
    return np.stack(images)


def augmented_batches(images: np.ndarray, batch_size: int, seed: int):
    """Endless batches in [-1, 1] from tf-keras's ImageDataGenerator, as the notebook fed fit()."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
                                   horizontal_flip=True)
    flow = generator.flow(images.astype(np.float32), batch_size=batch_size, shuffle=True, seed=seed)
    while True:
        batch = next(flow)
        if len(batch) == batch_size:  # the epoch's last, partial batch is dropped
            yield batch / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    count = len(images)
    rows = -(-count // columns)
    canvas = np.full((rows * 66 + 2, columns * 66 + 2, 3), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        canvas[2 + row * 66:2 + row * 66 + 64, 2 + column * 66:2 + column * 66 + 64] = image
    return canvas


def train(data: str, steps: int, out: str, *, batch_size: int = 64, seed: int = 0,
          snapshots: tuple[int, ...] = (), log_every: int = 50, log=print) -> dict:
    """Trains the seed recipe for `steps` steps; returns {"seconds": ..., "images_per_sec": ...}."""
    import keras
    import tensorflow as tf
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(seed)
    images = load_zip_images(data)
    gan = make_seed_gan(seed=seed)
    grid_noise = np.random.default_rng(GRID_NOISE_SEED).standard_normal((64, NOISE_DIM)).astype(np.float32)
    marks = sorted(set(snapshots) | {steps})
    losses = open(os.path.join(out, "losses.jsonl"), "w")
    started = time.perf_counter()
    train_seconds = 0.0

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.window: list[tuple[float, float]] = []
            self.step = 0
            self.window_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            nonlocal train_seconds
            self.step += 1
            # fit()'s Mean trackers are reset per epoch: one epoch here is one window.
            if self.step % log_every == 0 or self.step in marks:
                elapsed = time.perf_counter() - self.window_start
                train_seconds += elapsed
                row = {"step": self.step, "loss/d": float(logs["d_loss"]), "loss/g": float(logs["g_loss"]),
                       "images_per_sec": (self.step - getattr(self, "last", 0)) * batch_size / elapsed}
                self.last = self.step
                losses.write(json.dumps(row) + "\n")
                losses.flush()
                log(json.dumps(row))
                if self.step in marks:
                    gan.generator.save_weights(os.path.join(out, f"generator-{self.step}.weights.h5"))
                    samples = to_uint8(gan.generator(grid_noise, training=False))
                    Image.fromarray(grid(samples)).save(os.path.join(out, f"samples-{self.step}.png"))
                for metric in gan.metrics:
                    metric.reset_state()
                self.window_start = time.perf_counter()

    dataset = tf.data.Dataset.from_generator(
        lambda: augmented_batches(images, batch_size, seed),
        output_signature=tf.TensorSpec([batch_size, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float64),
    ).map(lambda batch: tf.cast(batch, tf.float32)).prefetch(2)
    gan.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[Record()], verbose=0)
    losses.close()
    return {"seconds": time.perf_counter() - started, "images_per_sec": steps * batch_size / train_seconds}


def load_generator(path: str, noise_dim: int = NOISE_DIM):
    generator = build_seed_generator(noise_dim)
    generator.load_weights(path)
    return generator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a zip of 64x64 training images")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshots", default="", help="comma-separated steps at which to save the generator")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    snapshots = tuple(int(step) for step in args.snapshots.split(",") if step)
    result = train(args.data, args.steps, args.out, batch_size=args.batch_size, seed=args.seed,
                   snapshots=snapshots, log_every=args.log_every)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
