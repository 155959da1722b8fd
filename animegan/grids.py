"""Image grids and PNG encoding, for samples, previews and generated images."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from animegan import storage


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 [rows*(H+p)+p, columns*(W+p)+p, 3] picture on a white background."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    count, height, width, _ = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, 3), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def encode_image(array: np.ndarray, image_format: str = "png") -> bytes:
    buffer = io.BytesIO()
    pil_format = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}[image_format.lower()]
    options = {"quality": 95} if pil_format == "JPEG" else {}
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def save_png(url: str, array: np.ndarray) -> None:
    storage.write_bytes(url, encode_image(array, "png"))
