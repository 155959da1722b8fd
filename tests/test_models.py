"""Model shapes, output ranges, parameter counts and initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from animegan.config import TrainConfig
from animegan.models import build_discriminator, build_generator


def generator_parameters(noise_dim: int, width: int) -> int:
    """Counted by hand from the DCGAN layout: dense to 4x4x8w, then 4x4 transposed convs 8w->4w->2w->w->3."""
    count = noise_dim * 16 * 8 * width + 4 * 8 * width  # projection (no bias) and its batch norm
    for channels_in, channels_out in [(8, 4), (4, 2), (2, 1)]:
        count += 16 * channels_in * width * channels_out * width + 4 * channels_out * width
    return count + 16 * width * 3 + 3  # to RGB, with bias


def discriminator_parameters(width: int, input_batch_norm: bool = True) -> int:
    if input_batch_norm:
        count = 16 * 3 * width + 4 * width  # first conv without a bias, then batch norm
    else:
        count = 16 * 3 * width + width  # dcgan-paper: first conv with a bias and no batch norm
    for channels_in, channels_out in [(1, 2), (2, 4), (4, 8)]:
        count += 16 * channels_in * width * channels_out * width + 4 * channels_out * width
    return count + 16 * 8 * width + 1  # dense logit over the 4x4x8w features


@pytest.mark.parametrize("noise_dim, width", [(300, 64), (100, 32), (16, 8)])
def test_parameter_counts_match_the_architecture(noise_dim, width):
    config = TrainConfig(noise_dim=noise_dim, generator_width=width, discriminator_width=width)
    assert build_generator(config).count_params() == generator_parameters(noise_dim, width)
    assert build_discriminator(config).count_params() == discriminator_parameters(width)
    paper = config.replace(architecture="dcgan-paper")
    assert build_generator(paper).count_params() == generator_parameters(noise_dim, width)
    assert build_discriminator(paper).count_params() == discriminator_parameters(width, input_batch_norm=False)


def test_default_sizes_are_the_classic_dcgan():
    config = TrainConfig()
    assert build_generator(config).count_params() == 5_217_027
    assert build_discriminator(config).count_params() == 2_767_425 + 3 * 64  # batch norm, no bias, at D's input


def test_shapes_and_ranges():
    config = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8)
    generator, discriminator = build_generator(config), build_discriminator(config)
    noise = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    images = np.asarray(generator(noise, training=False))
    assert images.shape == (5, 64, 64, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    logits = np.asarray(discriminator(images, training=False))
    assert logits.shape == (5, 1)
    assert np.isfinite(logits).all()


def test_weights_start_from_n_0_002_and_depend_on_the_seed():
    config = TrainConfig(noise_dim=300, generator_width=64)
    kernel = build_generator(config).get_layer("up1").kernel.numpy()
    assert abs(kernel.mean()) < 1e-3
    assert kernel.std() == pytest.approx(0.02, rel=0.05)
    same = build_generator(config).get_layer("up1").kernel.numpy()
    other = build_generator(config.replace(seed=1)).get_layer("up1").kernel.numpy()
    assert np.array_equal(kernel, same)
    assert not np.array_equal(kernel, other)


def test_seed_notebook_preset_is_the_reference_recipe_layer_for_layer():
    """--preset seed-notebook builds exactly the networks of benchmarks/seed_reference.py."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import seed_reference
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    config = TrainConfig.from_dict({"preset": "seed-notebook"})

    def layout(model):
        return [(type(layer).__name__, layer.count_params(), tuple(layer.output.shape[1:]),
                 getattr(layer, "use_bias", None), getattr(getattr(layer, "activation", None), "__name__", None))
                for layer in model.layers]

    assert layout(build_generator(config)) == layout(seed_reference.build_seed_generator(config.noise_dim))
    assert layout(build_discriminator(config)) == layout(seed_reference.build_seed_discriminator())
    assert build_generator(config).count_params() == seed_reference.build_seed_generator().count_params()


def test_discriminator_options_change_only_what_they_name():
    base = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8)
    spectral = build_discriminator(base.replace(spectral_norm=True, discriminator_batch_norm=False))
    kinds = [type(layer).__name__ for layer in spectral.layers]
    assert kinds.count("SpectralConv2D") == 4 and "BatchNormalization" not in kinds
    with_std = build_discriminator(base.replace(minibatch_std=4))
    # One extra input channel for the last convolution (4x4 kernel, 8w outputs): 16 x 8w more weights.
    assert with_std.count_params() - build_discriminator(base).count_params() == 16 * 8 * 8
    assert with_std.get_layer("minibatch_std").output.shape[-1] == 4 * 8 + 1
