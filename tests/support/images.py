"""Small synthetic images in every format and mode the pipeline must read."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def random_pixels(seed: list[int], count: int = 8):
    """A uint8 tf batch [count, 64, 64, 3] of uniform noise pixels: what the training step takes."""
    import tensorflow as tf

    values = tf.random.stateless_uniform([count, 64, 64, 3], seed=seed, minval=0, maxval=256, dtype=tf.int32)
    return tf.cast(values, tf.uint8)


def pattern(width: int = 64, height: int = 64, seed: int = 0) -> np.ndarray:
    """A uint8 RGB picture with structure (gradients and a square), not just noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                      np.full_like(x, int(rng.integers(0, 255)))], axis=-1).astype(np.uint8)
    image[height // 4: height // 2, width // 4: width // 2] = rng.integers(0, 255, 3)
    return image


def encode(array: np.ndarray, image_format: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(array).convert(mode)
    options = {"quality": 95} if image_format == "JPEG" else {}
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def write_folder(folder, count: int, image_format: str = "PNG", size: int = 64) -> list[str]:
    """`count` images named 00000.png ... in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    extension = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp"}[image_format]
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.{extension}"
        path.write_bytes(encode(pattern(size, size, seed=index), image_format))
        paths.append(str(path))
    return paths
