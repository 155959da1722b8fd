"""Walks through the generator's latent space: spherical interpolation between noise vectors.

Gaussian noise in many dimensions lies near a sphere of radius sqrt(noise_dim);
a straight line between two points cuts through the inside, where the generator
saw no noise in training, and its middle images come out washed out. Spherical
interpolation (slerp; White, "Sampling Generative Networks", 2016) follows the
great circle instead, so every point of the walk looks like a training input.
"""

from __future__ import annotations

import math

import numpy as np

from animegan import storage
from animegan.generation import LoadedGenerator, noise_for

# Milliseconds per GIF frame: a 16-step walk there and back takes about 2.5 s.
FRAME_MILLISECONDS = 80
OUTPUT_KINDS = (".png", ".gif")


def slerp(start: np.ndarray, end: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Points [len(fractions), D] on the great-circle arc from `start` (fraction 0) to `end` (fraction 1).

    The norm is interpolated along with the direction. Nearly parallel vectors
    fall back to a straight line, where the arc formula would divide by ~0.
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    if start.shape != end.shape or start.ndim != 1:
        raise ValueError(f"slerp needs two vectors of the same length, got shapes {start.shape} and {end.shape}")
    fractions = np.asarray(fractions, np.float64)[:, None]
    cosine = np.dot(start, end) / max(np.linalg.norm(start) * np.linalg.norm(end), 1e-12)
    angle = math.acos(min(1.0, max(-1.0, cosine)))
    if math.sin(angle) < 1e-6:
        return (1.0 - fractions) * start + fractions * end
    return (np.sin((1.0 - fractions) * angle) * start + np.sin(fractions * angle) * end) / math.sin(angle)


def check_walk(seed: int, pairs: int, steps: int) -> None:
    if pairs <= 0:
        raise ValueError(f"--pairs must be a positive integer, got {pairs}")
    if steps < 2:
        raise ValueError(f"--steps must be at least 2 (the two end points), got {steps}")
    if seed < 0:
        raise ValueError(f"--seed must not be negative, got {seed}")


def walk_noise(seed: int, pairs: int, steps: int, noise_dim: int) -> np.ndarray:
    """float32 [pairs, steps, noise_dim]: walk p goes from noise index 2p to 2p+1 of `seed`.

    The end points are the noise of `animegan generate --seed` images 2p and 2p+1,
    so a walk joins two images a user has already seen.
    """
    check_walk(seed, pairs, steps)
    ends = noise_for(seed, range(2 * pairs), noise_dim)
    fractions = np.linspace(0.0, 1.0, steps)
    return np.stack([slerp(ends[2 * pair], ends[2 * pair + 1], fractions)
                     for pair in range(pairs)]).astype(np.float32)


def render_walks(generator: LoadedGenerator, seed: int, pairs: int, steps: int,
                 batch_size: int = 64) -> np.ndarray:
    """uint8 [pairs, steps, 64, 64, 3]: the generator's images along each walk."""
    from animegan.data.pipeline import to_uint8

    noise = walk_noise(seed, pairs, steps, generator.noise_dim).reshape(pairs * steps, -1)
    images = np.concatenate([to_uint8(generator.model(noise[start:start + batch_size], training=False))
                             for start in range(0, len(noise), batch_size)])
    return images.reshape(pairs, steps, *images.shape[1:])


def output_kind(url: str) -> str:
    """'.png' or '.gif' from the output's name; ValueError for anything else."""
    kind = "." + url.rsplit(".", 1)[-1].lower() if "." in url.rsplit("/", 1)[-1] else ""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"--out must end in .png (a grid) or .gif (an animation), got {url!r}")
    return kind


def save_walks(url: str, walks: np.ndarray) -> None:
    """Writes the walks as a picture: a .png grid (a row per walk, a column per step) or an animated .gif.

    The GIF's frame t shows every walk at step t side by side, going there and back
    (steps + steps - 2 frames) so that the loop has no jump.
    """
    from animegan.grids import encode_image, image_grid

    kind = output_kind(url)
    pairs, steps = walks.shape[:2]
    if kind == ".png":
        storage.write_bytes(url, encode_image(image_grid(walks.reshape(-1, *walks.shape[2:]), columns=steps)))
        return
    columns = math.ceil(math.sqrt(pairs))
    order = list(range(steps)) + list(range(steps - 2, 0, -1))
    frames = [_gif_frame(image_grid(walks[:, step], columns=columns)) for step in order]
    storage.write_bytes(url, _encode_gif(frames))


def _gif_frame(array: np.ndarray):
    from PIL import Image

    # One adaptive palette per frame: faces need more than the web palette's 216 colours.
    return Image.fromarray(array).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def _encode_gif(frames: list) -> bytes:
    import io

    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=FRAME_MILLISECONDS,
                   loop=0, disposal=1)
    return buffer.getvalue()
