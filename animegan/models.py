"""The DCGAN generator and discriminator for 64x64x3 images (Radford et al., 2015).

Builders are pure functions of the config; call them inside `strategy.scope()`
so their variables are mirrored across replicas.

Three layouts (`--architecture`), the same four stride-2 stages and widths:
- "dcgan-paper", as the DCGAN paper and PyTorch's reference draw it: a
  generator of batch norm and ReLU with no biases before batch norm, and a
  discriminator without batch norm at its input;
- "dcgan" (the default): the same with batch norm after the discriminator's
  first convolution too. Bisected on the real faces through animegan's own
  step (README, design notes), that one layer is what made the paper's layout
  learn slower than the seed notebook: with everything else equal, standard
  FID after 150 steps fell from 346 to 296 (benchmarks/quality.py variant p
  measures it at full length). Real and generated images reach D in separate
  batches, so D's first layer normalises each batch's colours on its own;
- "seed-notebook", as the notebook animegan grew from: a generator with biases
  everywhere, no batch norm or activation after the projection, batch norm and
  LeakyReLU(0.2) after each transposed convolution; a discriminator with batch
  norm after every convolution.
The discriminator options (spectral normalisation, batch norm, the minibatch
standard deviation) apply to either layout.
"""

from __future__ import annotations

import keras
from keras import layers

from animegan.config import IMAGE_SIZE, TrainConfig
from animegan.layers import MinibatchStdDev, SpectralConv2D

# DCGAN's initialisation: all weights from N(0, 0.02).
_INIT_STDDEV = 0.02
# Batch-norm moving statistics follow the batches with momentum 0.9, as in the reference PyTorch DCGAN
# (torch momentum 0.1). Keras's default 0.99 leaves them near their initial values for hundreds of
# steps, so inference-mode samples and exports come out blank early in training.
_BN_MOMENTUM = 0.9


def _init(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(mean=0.0, stddev=_INIT_STDDEV, seed=seed)


def build_generator(config: TrainConfig, name: str = "generator") -> keras.Model:
    """Noise [B, noise_dim] -> images [B, 64, 64, 3] in [-1, 1].

    A dense projection to 4x4 feature maps, then four stride-2 transposed
    convolutions (widths 8w, 4w, 2w, w, then 3), batch normalisation between,
    tanh at the end.
    """
    width = config.generator_width
    seed = config.seed * 100
    seed_notebook = config.architecture == "seed-notebook"
    noise = keras.Input(shape=(config.noise_dim,), name="noise")
    # A bias before batch norm is cancelled by its mean; the seed notebook has them anyway.
    x = layers.Dense(4 * 4 * width * 8, use_bias=seed_notebook, kernel_initializer=_init(seed), name="project")(noise)
    x = layers.Reshape((4, 4, width * 8))(x)
    if not seed_notebook:
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name="project_bn")(x)
        x = layers.ReLU()(x)
    for index, multiplier in enumerate([4, 2, 1]):
        x = layers.Conv2DTranspose(width * multiplier, 4, strides=2, padding="same", use_bias=seed_notebook,
                                   kernel_initializer=_init(seed + index + 1), name=f"up{index + 1}")(x)
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"up{index + 1}_bn")(x)
        x = layers.LeakyReLU(negative_slope=0.2)(x) if seed_notebook else layers.ReLU()(x)
    x = layers.Conv2DTranspose(3, 4, strides=2, padding="same", kernel_initializer=_init(seed + 9),
                               name="to_rgb")(x)
    # tanh in float32 even under mixed precision: the output is compared with real pixels.
    images = layers.Activation("tanh", dtype="float32", name="images")(x)
    return keras.Model(noise, images, name=name)


def build_discriminator(config: TrainConfig, name: str = "discriminator") -> keras.Model:
    """Images [B, 64, 64, 3] -> one real/fake logit [B, 1].

    Four stride-2 convolutions (widths w, 2w, 4w, 8w) with LeakyReLU(0.2), then
    a dense logit. Batch norm follows every convolution (dcgan, seed-notebook)
    or every one but the first (dcgan-paper), unless --no-discriminator-batch-norm. With
    --minibatch-std G, the last convolution also sees how much each group of G
    images differs.
    """
    width = config.discriminator_width
    seed = config.seed * 100 + 50
    convolution = SpectralConv2D if config.spectral_norm else layers.Conv2D
    images = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    x = images
    for index, multiplier in enumerate([1, 2, 4, 8]):
        normalised = config.discriminator_batch_norm and (index > 0 or config.architecture != "dcgan-paper")
        if index == 3 and config.minibatch_std:
            x = MinibatchStdDev(config.minibatch_std, name="minibatch_std")(x)
        # Batch norm's shift makes a bias redundant; the seed notebook keeps them.
        use_bias = not normalised or config.architecture == "seed-notebook"
        x = convolution(width * multiplier, 4, strides=2, padding="same", use_bias=use_bias,
                        kernel_initializer=_init(seed + index), name=f"down{index + 1}")(x)
        if normalised:
            x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"down{index + 1}_bn")(x)
        x = layers.LeakyReLU(negative_slope=0.2)(x)
    x = layers.Flatten()(x)
    # The logit in float32: the loss is computed from it.
    logits = layers.Dense(1, kernel_initializer=_init(seed + 9), dtype="float32", name="logit")(x)
    return keras.Model(images, logits, name=name)
