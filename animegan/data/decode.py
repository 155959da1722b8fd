"""Checking and decoding encoded images into 64x64 RGB tensors.

A cheap byte-level check in Python catches non-images, truncated files and
images too large to decode safely (their size read from the header, see
animegan/data/header.py) before TensorFlow sees them, so that bad files are
skipped and counted (with the reason) instead of failing a whole tf.data
pipeline or exhausting the worker's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from animegan.config import IMAGE_SIZE, TrainConfig
from animegan.data.header import UnreadableHeader, read_header


@dataclass(frozen=True)
class ImageLimits:
    """The largest image the pipeline decodes: in pixels (from the header), and in encoded bytes."""

    max_pixels: int = TrainConfig.max_image_pixels
    max_bytes: int = TrainConfig.max_image_bytes

    @classmethod
    def of(cls, config: TrainConfig) -> "ImageLimits":
        return cls(config.max_image_pixels, config.max_image_bytes)

_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
}


def image_format(data: bytes) -> str | None:
    """'jpeg', 'png', 'gif', 'bmp' or 'webp' from the magic bytes; None when it is none of them."""
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def problem_with(data: bytes, limits: ImageLimits = ImageLimits()) -> str | None:
    """Why these bytes cannot be a whole image, or one within the limits; None when they look decodable."""
    if not data:
        return "empty file"
    if len(data) > limits.max_bytes:
        return f"{len(data):,} bytes, above the limit of {limits.max_bytes:,} (--max-image-bytes)"
    kind = image_format(data)
    if kind is None:
        return "not an image (unknown file signature)"
    # A JPEG ends with the EOI marker and a PNG with its IEND chunk; a file cut
    # short in transfer lacks them. Some encoders pad after the end, so look at the tail.
    if kind == "jpeg" and b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if kind == "png" and b"IEND" not in data[-32:]:
        return "truncated PNG (no IEND chunk)"
    if kind == "webp" and len(data) < int.from_bytes(data[4:8], "little") + 8:
        return "truncated WebP"
    try:
        header = read_header(data, kind)
    except UnreadableHeader as error:
        return f"unreadable header ({error})"
    if header.pixels > limits.max_pixels:
        return (f"{header.describe()}, above the limit of {limits.max_pixels:,} pixels (--max-image-pixels); "
                f"not decoded")
    return None


def decode_image(encoded: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
    """Encoded bytes -> uint8 [size, size, 3]: pixels, a quarter of float32's bytes to cache and to copy.

    Any channel layout (grey, grey+alpha, RGB, RGBA, palette) becomes RGB, with
    transparency composited over white; the largest centred square is cropped
    and resized with antialiasing.
    """
    decoded = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    # Most training images are already RGB squares of the right size. Each tf.cond
    # below costs about as much as decoding a 64x64 JPEG, so skip them all for those.
    is_ready = tf.reduce_all(tf.equal(tf.shape(decoded), [size, size, 3]))
    ready = tf.cond(is_ready, lambda: decoded, lambda: _to_rgb_square(decoded, size))
    return tf.ensure_shape(ready, [size, size, 3])


def _to_rgb_square(decoded: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.cast(decoded, tf.float32)
    channels = tf.shape(image)[-1]
    rgb = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
    has_alpha = tf.equal(channels % 2, 0)  # 2 (grey + alpha) or 4 (RGBA)
    alpha = tf.cond(has_alpha, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1]))
    rgb = rgb * alpha + 255.0 * (1.0 - alpha)

    height, width = tf.shape(rgb)[0], tf.shape(rgb)[1]
    side = tf.minimum(height, width)
    rgb = tf.image.crop_to_bounding_box(rgb, (height - side) // 2, (width - side) // 2, side, side)
    rgb = tf.cond(
        tf.equal(side, size),
        lambda: rgb,
        lambda: tf.image.resize(rgb, [size, size], method="area", antialias=True),
    )
    return tf.cast(tf.round(tf.clip_by_value(rgb, 0.0, 255.0)), tf.uint8)
