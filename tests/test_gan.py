"""The GAN update on 1 and 2 replicas: losses scaled by the global batch, distinct noise per replica,
weights kept in sync, EMA moving towards the generator."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from animegan.config import TrainConfig
from animegan.gan import build_state, ema_decay_at, make_ema_statistics_refresher, make_train_step, replica_noise
from tests.support.images import random_pixels

TINY = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8, batch_size=8)


def test_first_step_losses_are_those_of_an_undecided_discriminator():
    strategy = tf.distribute.get_strategy()
    state = build_state(TINY)
    step = make_train_step(state, TINY, strategy)
    images = random_pixels([0, 1])
    d_loss, g_loss, d_real, d_fake = step(images).numpy()
    # D outputs ~0.5 on everything at initialisation: each BCE term is ln 2. Batch norm at D's input
    # spreads its first logits (1.54 on this batch); a loss scaled by the wrong batch would be off by 2x.
    assert d_loss == pytest.approx(2 * math.log(2), abs=0.3)
    # G is scored by the discriminator *after* its update in the same step (alternating updates),
    # which already pushes generated images below 0.5: G's loss is above chance.
    assert math.log(2) < g_loss < 3.0
    assert d_real == pytest.approx(0.5, abs=0.1) and d_fake == pytest.approx(0.5, abs=0.1)
    assert int(state.step.numpy()) == 1


def test_discriminator_learns_to_tell_real_from_fake_and_ema_follows():
    strategy = tf.distribute.get_strategy()
    state = build_state(TINY)
    step = make_train_step(state, TINY, strategy)
    images = random_pixels([0, 2])
    before = state.ema_generator.get_layer("up1").kernel.numpy().copy()
    values = np.array([step(images).numpy() for _ in range(15)])
    assert np.isfinite(values).all()
    assert values[-1, 0] < values[0, 0]  # D's loss falls
    assert values[-1, 2] - values[-1, 3] > values[0, 2] - values[0, 3]  # D(x) - D(G(z)) grows
    after = state.ema_generator.get_layer("up1").kernel.numpy()
    assert not np.array_equal(before, after)
    assert not np.array_equal(after, state.generator.get_layer("up1").kernel.numpy())  # averaged, not copied


def test_ema_generator_gets_batch_norm_statistics_of_its_own_weights():
    state = build_state(TINY)
    # Averaged weights that differ from those whose statistics were copied (here: the initial 0 and 1).
    for weight in state.ema_generator.trainable_weights:
        weight.assign(weight * 3.0 + 0.1)
    refresh = make_ema_statistics_refresher(state, TINY, samples=64)
    noise = np.random.default_rng([TINY.seed, 2]).standard_normal((64, TINY.noise_dim)).astype(np.float32)
    as_trained = state.ema_generator(noise, training=True).numpy()

    def inference_gap() -> float:
        return float(np.abs(state.ema_generator(noise, training=False).numpy() - as_trained).max())

    assert inference_gap() > 0.2  # stale statistics: inference output is not what the weights make
    refresh()
    assert inference_gap() < 1e-3  # on the refresh's own noise, inference equals training mode
    first = state.ema_generator.get_layer("project_bn").moving_mean.numpy().copy()
    refresh()
    np.testing.assert_array_equal(first, state.ema_generator.get_layer("project_bn").moving_mean.numpy())


def test_ema_decay_warms_up():
    assert float(ema_decay_at(tf.constant(0), 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(tf.constant(10**6), 0.999)) == pytest.approx(0.999)


def test_noise_slices_do_not_depend_on_the_replica_count():
    full = replica_noise(tf.constant(3), 0, seed=7, global_batch=8, noise_dim=4, local_batch=tf.constant(8))
    assert full.shape == (8, 4)
    again = replica_noise(tf.constant(3), 0, seed=7, global_batch=8, noise_dim=4, local_batch=tf.constant(8))
    other_stream = replica_noise(tf.constant(3), 1, seed=7, global_batch=8, noise_dim=4, local_batch=tf.constant(8))
    assert np.array_equal(full, again)
    assert not np.array_equal(full, other_stream)


TWO_REPLICAS = textwrap.dedent("""
    import json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from animegan.config import TrainConfig
    from animegan.gan import build_state, make_train_step, replica_noise
    from tests.support.images import random_pixels
    config = TrainConfig(noise_dim=16, generator_width=8, discriminator_width=8, batch_size=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        state = build_state(config)
    step = make_train_step(state, config, strategy)
    images = random_pixels([0, 1])
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(images).repeat())
    iterator = iter(dataset)
    first = step(next(iterator)).numpy().tolist()
    for _ in range(3):
        step(next(iterator))
    kernel = state.generator.get_layer("up1").kernel.value
    copies = [v.numpy() for v in kernel.values]
    noise = strategy.run(lambda: replica_noise(tf.constant(0), 0, 0, 8, 16, tf.constant(4)))
    slices = [v.numpy() for v in noise.values]

    # The real images' augmentation, as each replica's step does it, against the same ops run eagerly.
    from animegan.data.augment import Augmentation, augment_batch
    from animegan.gan import augmentation_seeds, prepare_real_images
    augmentation = Augmentation(True, 10.0, 0.1)

    @tf.function
    def on_replicas(pixels):
        def replica(batch):
            seed = augmentation_seeds(tf.constant(5, tf.int64), 0, 4)[0]
            return prepare_real_images(batch, seed, augmentation), seed
        return strategy.run(replica, args=(pixels,))
    prepared, seeds = on_replicas(next(iterator))
    worst = max(float(np.abs(prepared.values[r].numpy() - (augment_batch(
        tf.cast(images[4 * r:4 * r + 4], tf.float32), seeds.values[r], augmentation).numpy() / 127.5 - 1.0)).max())
        for r in range(2))
    print(json.dumps({"first": first, "replicas": strategy.num_replicas_in_sync,
                      "in_sync": bool(np.array_equal(copies[0], copies[1])),
                      "distinct_noise": bool(not np.allclose(slices[0], slices[1])),
                      "augmentation_difference": worst,
                      "distinct_augmentation": bool(not np.array_equal(seeds.values[0], seeds.values[1])),
                      "step": int(state.step.numpy())}))
""")


def test_two_replicas_scale_losses_by_the_global_batch_and_stay_in_sync():
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    # Summed over replicas and divided by the global batch: about 2 ln 2 as on one replica, not the
    # 4 ln 2 of dividing by the local batch. (Batch norm over 4-image replica batches spreads the
    # untrained discriminator's logits, which lifts the expected BCE above ln 2 per term by up to ~0.1.)
    assert report["first"][0] == pytest.approx(2 * math.log(2), abs=0.3)
    assert report["in_sync"] and report["distinct_noise"]
    assert report["step"] == 4
    # Augmentation in the distributed step is the host's augmentation, with a seed of each replica's own.
    assert report["augmentation_difference"] < 1e-5 and report["distinct_augmentation"]
