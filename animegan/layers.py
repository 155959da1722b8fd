"""Layers the networks use beyond Keras's own: spectrally normalised convolutions and minibatch standard deviation.

Both are registered with Keras's serialisation, so a saved discriminator loads
back (generators never use them: the exported generator stays plain Keras).
"""

from __future__ import annotations

import keras
from keras import layers, ops

SPECTRAL_EPSILON = 1e-12


@keras.saving.register_keras_serializable(package="animegan")
class SpectralConv2D(layers.Conv2D):
    """A Conv2D whose kernel is divided by its largest singular value (Miyato et al., 2018).

    Unlike `keras.layers.SpectralNormalization`, which overwrites the trainable
    kernel with the normalised one in every training call (so the optimizer and
    repeated calls see a kernel that changes under them, and no gradient flows
    through the norm), the kernel stays the optimizer's variable here and the
    normalisation is part of the forward pass, gradient included. One power
    iteration per training call refines the estimate of the top singular
    vector `u`, which is a deterministic function of the (mirrored) kernel, so
    every replica keeps the same `u`.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.power_u = self.add_weight(
            shape=(1, self.filters), name="power_u", trainable=False, autocast=False,
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=self.filters),
            aggregation="mean",
        )

    def normalized_kernel(self, training: bool = False):
        kernel = ops.cast(self.kernel, "float32")
        matrix = ops.reshape(kernel, [-1, self.filters])
        u = self.power_u.value
        v = _normalize(ops.matmul(u, ops.transpose(matrix)))
        u = _normalize(ops.matmul(v, matrix))
        u, v = ops.stop_gradient(u), ops.stop_gradient(v)
        if training:
            self.power_u.assign(u)
        sigma = ops.sum(ops.matmul(v, matrix) * u)
        return ops.cast(kernel / sigma, self.compute_dtype)

    def call(self, inputs, training=False):
        outputs = self.convolution_op(inputs, self.normalized_kernel(training))
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (len(outputs.shape) - 1) + (self.filters,)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="animegan")
class MinibatchStdDev(layers.Layer):
    """Appends one feature map: the mean standard deviation of the features across a group of images.

    A discriminator that sees how varied a group of images is can call out a
    generator that draws the same face again and again (Karras et al., 2018).
    Groups are taken within each replica's batch, whose size must be a multiple
    of `group_size` (or smaller than it: then the whole batch is one group).
    """

    def __init__(self, group_size: int = 4, **kwargs):
        super().__init__(**kwargs)
        if group_size < 2:
            raise ValueError(f"the minibatch standard deviation needs groups of 2 or more images, got {group_size}")
        self.group_size = group_size

    def call(self, inputs):
        shape = ops.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        group = ops.minimum(self.group_size, batch)
        values = ops.cast(inputs, "float32")
        grouped = ops.reshape(values, (group, -1, height, width, channels))
        deviation = ops.sqrt(ops.var(grouped, axis=0) + 1e-8)  # [batch / group, H, W, C]
        per_group = ops.mean(deviation, axis=[1, 2, 3])  # [batch / group]
        # Image i belongs to group i % (batch / group), as the reshape above laid them out.
        feature = ops.tile(ops.reshape(per_group, (1, -1, 1, 1, 1)), (group, 1, height, width, 1))
        feature = ops.reshape(feature, (batch, height, width, 1))
        return ops.concatenate([inputs, ops.cast(feature, inputs.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}


def _normalize(vector):
    return vector / (ops.sqrt(ops.sum(ops.square(vector))) + SPECTRAL_EPSILON)
