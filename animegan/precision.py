"""Numeric precision and compilation of the training step: mixed precision policies, loss scaling, XLA.

- `--precision mixed_bfloat16|mixed_float16` builds the models under that Keras
  policy: variables stay float32, layers compute in 16 bits, and the layers the
  loss reads (the generator's tanh, the discriminator's logit) stay float32
  (models.py). The policy is applied while the models are built, not set for the
  whole process, so whatever is built later (the exported generator, the models
  `animegan generate` loads) is float32 and runs on any CPU.
- float16 has a narrow exponent range: its losses are scaled (Keras's
  `LossScaleOptimizer`); bfloat16 has float32's range and needs no scaling.
- `--jit` compiles the step's forward and backward passes with XLA. Its default
  depends on the device; see `jit_enabled`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from animegan.config import PRECISIONS


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Keras layers created inside take `precision` as their dtype policy; the previous policy comes back after."""
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def wrap_optimizer(optimizer, precision: str):
    """The optimizer as training uses it: with dynamic loss scaling under float16, as it is otherwise."""
    import keras

    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{optimizer.name}_loss_scale")
    return optimizer


def inner_optimizer(optimizer):
    """The optimizer whose slots a checkpoint holds (the same whatever the precision)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def loss_scale_variables(optimizer) -> list:
    """A LossScaleOptimizer's own state (its step counter and current scale); nothing for a plain one."""
    if not hasattr(optimizer, "inner_optimizer"):
        return []
    return [optimizer.step_counter, optimizer.dynamic_scale]


def agree_on_finiteness(gradients: list, optimizer) -> list:
    """Makes the replicas agree whether this step's gradients are finite, before a LossScaleOptimizer sees them.

    A LossScaleOptimizer checks the *local* gradients of each replica for inf/NaN and
    then either applies them (an all-reduce) or skips the step. With a custom loop
    under a strategy, one replica's gradients can overflow while another's do not:
    the replicas would then take different branches, one waiting in an all-reduce
    the other never joins. One scalar all-reduce settles it: if any replica overflowed,
    every replica hands the optimizer non-finite gradients, so all skip the step and
    halve the scale together.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if not hasattr(optimizer, "inner_optimizer") or context is None or context.num_replicas_in_sync == 1:
        return gradients
    local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None])
    overflowed = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(local, tf.float32))
    poison = tf.where(overflowed > 0, tf.constant(float("nan")), tf.constant(1.0))
    return [None if g is None else g * tf.cast(poison, g.dtype) for g in gradients]


def jit_enabled(jit: bool | None) -> bool:
    """Whether to XLA-compile the step: as asked, or by default on with a GPU and off on CPU.

    On GPUs XLA fuses the batch norms and activations between the convolutions,
    which is where a small convolutional network loses time there. On CPUs the
    measurements disagree (slower on an AVX-512 machine, 1.2-1.4x faster on an
    AVX2 one: README "Performance"), so the CPU default stays Keras's own
    `jit_compile="auto"` choice: off on CPU-only machines.
    """
    if jit is not None:
        return bool(jit)
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
