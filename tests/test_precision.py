"""Mixed precision and XLA: the policies are applied, float16 scales its loss, every precision trains,
checkpoints and the exported generator survive a change of precision, jit on and off agree."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from animegan import checkpoint as checkpoints
from animegan.config import PRECISIONS, TrainConfig
from animegan.gan import build_state, make_train_step
from tests.support.images import random_pixels
from animegan.workdir import RunLayout

TINY = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8, batch_size=8)
IMAGES = random_pixels([0, 1])


def _train(config: TrainConfig, steps: int):
    state = build_state(config)
    step = make_train_step(state, config, tf.distribute.get_strategy())
    return state, np.array([step(IMAGES).numpy() for _ in range(steps)])


def _slots(optimizer) -> list[np.ndarray]:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return [v.numpy() for v in inner.variables if "momentum" in v.path or "velocity" in v.path]


def test_mixed_bfloat16_computes_in_bfloat16_and_keeps_float32_weights_loss_and_outputs():
    state = build_state(TINY.replace(precision="mixed_bfloat16"))
    hidden = state.generator.get_layer("up1")
    assert (hidden.compute_dtype, hidden.kernel.dtype) == ("bfloat16", "float32")
    assert state.discriminator.get_layer("down2").compute_dtype == "bfloat16"
    # The layers the loss reads stay float32.
    assert state.generator.get_layer("images").compute_dtype == "float32"
    assert state.discriminator.get_layer("logit").compute_dtype == "float32"
    assert state.generator(tf.zeros([2, 16])).dtype == tf.float32
    assert not isinstance(state.generator_optimizer, keras.optimizers.LossScaleOptimizer)  # bf16 needs no scaling
    # The policy held while the models were built only: what is built next is float32.
    assert keras.mixed_precision.dtype_policy().name == "float32"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_short_training_run_stays_finite_under_each_precision(precision):
    state, values = _train(TINY.replace(precision=precision), steps=6)
    assert np.isfinite(values).all()
    assert values[-1, 0] < values[0, 0]  # the discriminator learns
    assert all(np.isfinite(w).all() for w in state.generator.get_weights())


def test_float16_scales_the_loss_and_unscales_the_gradients():
    config = TINY.replace(precision="mixed_float16")
    state = build_state(config)
    optimizer = state.discriminator_optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.scale_loss(tf.constant(1.0))) == 2.0 ** 15
    # A scale this tiny model's first step does not overflow with (the default one does, and is halved).
    for scaled in [state.generator_optimizer, state.discriminator_optimizer]:
        scaled.dynamic_scale.assign(64.0)
    step = make_train_step(state, config, tf.distribute.get_strategy())
    step(IMAGES)
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 1  # applied, not skipped
    # Adam's first moment after one step is (1 - beta1) x the gradient: it must be the gradient of
    # the loss, not of the loss times the scale. Compare with float32 from the same initial weights.
    reference, _ = _train(TINY, steps=1)
    momentum = [v.numpy() for v in optimizer.inner_optimizer.variables if "momentum" in v.path]
    expected = [v.numpy() for v in reference.discriminator_optimizer.variables if "momentum" in v.path]
    for mine, theirs in zip(momentum, expected):
        assert np.linalg.norm(mine) / np.linalg.norm(theirs) == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_checkpoint_and_export_round_trip_under_mixed_precision(tmp_path, precision):
    from animegan.training import export_generator

    config = TINY.replace(precision=precision)
    state, _ = _train(config, steps=2)
    directory = str(tmp_path / "checkpoint")
    checkpoints.write_checkpoint(directory, state, step=2, epoch=0, skip_items=16,
                                 fixed_noise=np.zeros((4, 16), np.float32), config=config)

    # The same precision resumes everything, the loss scale included; float32 can resume it too.
    for resumed_precision in [precision, "float32"]:
        resumed = build_state(config.replace(precision=resumed_precision))
        info = checkpoints.restore(directory, resumed, config)
        assert info.step == 2
        for before, after in zip(state.discriminator.get_weights(), resumed.discriminator.get_weights()):
            np.testing.assert_array_equal(before, after)
        for before, after in zip(_slots(state.generator_optimizer), _slots(resumed.generator_optimizer)):
            np.testing.assert_array_equal(before, after)
    if precision == "mixed_float16":
        same = build_state(config)
        checkpoints.restore(directory, same, config)
        assert float(same.generator_optimizer.dynamic_scale.numpy()) == float(
            state.generator_optimizer.dynamic_scale.numpy())

    # The exported generator is a float32 model: it loads and runs the same on any CPU.
    layout = RunLayout(str(tmp_path / "run"))
    export_generator(state, config, layout, step=2)
    exported = keras.saving.load_model(layout.generator)
    assert {layer.dtype_policy.name for layer in exported.layers} == {"float32"}
    noise = tf.random.stateless_normal([4, 16], seed=[1, 2])
    with_float32 = build_state(TINY).ema_generator
    with_float32.set_weights(state.ema_generator.get_weights())
    np.testing.assert_allclose(exported(noise).numpy(), with_float32(noise, training=False).numpy(), atol=1e-6)


def test_jit_on_and_off_give_the_same_training():
    _, without = _train(TINY.replace(jit=False), steps=3)
    compiled, with_xla = _train(TINY.replace(jit=True), steps=3)
    np.testing.assert_allclose(with_xla, without, rtol=2e-3, atol=2e-3)
    assert np.isfinite(compiled.generator.get_weights()[0]).all()


def test_bad_precision_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="--precision must be one of float32, mixed_bfloat16, mixed_float16, "
                                         "got 'float16'"):
        TINY.replace(precision="float16").validate()


TWO_REPLICAS_OVERFLOW = textwrap.dedent("""
    import json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from animegan.config import TrainConfig
    from animegan.gan import build_state, make_train_step
    config = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8, batch_size=8,
                         precision="mixed_float16")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        state = build_state(config)
    for optimizer in [state.generator_optimizer, state.discriminator_optimizer]:
        optimizer.dynamic_scale.assign(64.0)  # low enough that the clean replica does not overflow
    step = make_train_step(state, config, strategy)
    # The second replica's half of the batch overflows; the first's is fine. (Pixels may be float in [0, 255].)
    images = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype(np.float32)
    images[4:] = np.nan
    before = state.discriminator.get_layer("down2").kernel.numpy().copy()
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(images).repeat())
    step(next(iter(dataset)))
    kernel = state.discriminator.get_layer("down2").kernel.value
    copies = [v.numpy() for v in kernel.values]
    scales = [float(v.numpy()) for v in state.discriminator_optimizer.dynamic_scale.value.values]
    print(json.dumps({"unchanged": all(bool(np.array_equal(c, before)) for c in copies), "scales": scales}))
""")


def test_replicas_skip_an_overflowing_float16_step_together():
    """One replica's overflow must make every replica skip the update (and halve the scale), not just that one."""
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS_OVERFLOW], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["unchanged"]
    assert report["scales"] == [32.0, 32.0]
