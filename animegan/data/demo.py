"""The built-in demo set: procedurally drawn cartoon faces, so the job runs anywhere offline.

Each face is drawn from its own seed (hair, skin, eye colour, face shape, pose
jitter), large and then downsampled for smooth edges. The set is written as one
zip archive into the workdir and read through the same pipeline as real data.
"""

from __future__ import annotations

import colorsys
import io
import os
import zipfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from animegan import storage
from animegan.config import IMAGE_SIZE

DEMO_VERSION = 1
DEMO_COUNT = 4096
_CANVAS = 128  # drawn at 2x, then downsampled

_HAIR = [(25, 20, 30), (90, 55, 35), (230, 200, 120), (240, 150, 190), (80, 120, 220),
         (130, 80, 170), (210, 210, 225), (190, 50, 50), (240, 140, 60), (60, 150, 110)]
_IRIS = [(40, 90, 200), (40, 150, 90), (190, 40, 50), (130, 60, 170), (120, 75, 40), (220, 170, 40)]
_SKIN = [(255, 228, 210), (250, 220, 195), (245, 210, 185), (255, 235, 220)]


def demo_archive_name() -> str:
    return f"demo-faces-v{DEMO_VERSION}-{DEMO_COUNT}.zip"


def draw_face(seed: int) -> Image.Image:
    """One 64x64 RGB cartoon face; the same seed always draws the same face."""
    rng = np.random.default_rng([DEMO_VERSION, seed])
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    jitter = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731

    hue = rng.uniform()
    background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.15, 0.35), 0.95))
    image = Image.new("RGB", (_CANVAS, _CANVAS), background)
    draw = ImageDraw.Draw(image)

    hair = pick(_HAIR)
    skin = pick(_SKIN)
    iris = pick(_IRIS)
    centre_x = 64 + jitter(5)
    centre_y = 66 + jitter(4)
    face_half_width = 27 + jitter(3)
    face_half_height = 31 + jitter(3)

    # Shoulders and neck, then hair behind the head (long or short).
    clothes = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.uniform(), 0.5, 0.6))
    draw.ellipse([centre_x - 44, centre_y + 40, centre_x + 44, centre_y + 100], fill=clothes)
    draw.rectangle([centre_x - 8, centre_y + 20, centre_x + 8, centre_y + 45], fill=skin)
    long_hair = rng.uniform() < 0.6
    hair_bottom = centre_y + (48 if long_hair else 12)
    draw.rounded_rectangle([centre_x - face_half_width - 9, centre_y - face_half_height - 10,
                            centre_x + face_half_width + 9, hair_bottom], radius=22, fill=hair)

    # Face: a round top and a pointed chin.
    top = centre_y - face_half_height
    draw.ellipse([centre_x - face_half_width, top, centre_x + face_half_width, centre_y + face_half_height * 0.6],
                 fill=skin)
    draw.polygon([(centre_x - face_half_width + 1, centre_y + 2), (centre_x + face_half_width - 1, centre_y + 2),
                  (centre_x + jitter(2), centre_y + face_half_height + 2)], fill=skin)

    # Bangs: a row of hair spikes over the forehead.
    spikes = int(rng.integers(4, 7))
    left, right = centre_x - face_half_width - 4, centre_x + face_half_width + 4
    draw.ellipse([left, top - 10, right, top + 22], fill=hair)
    for index in range(spikes):
        x0 = left + (right - left) * index / spikes
        x1 = left + (right - left) * (index + 1) / spikes
        tip = top + 22 + rng.uniform(4, 14)
        draw.polygon([(x0, top + 8), (x1, top + 8), ((x0 + x1) / 2 + jitter(3), tip)], fill=hair)

    # Big eyes: white, iris, pupil, highlight, and a heavy upper lash line.
    eye_y = centre_y + 6 + jitter(2)
    eye_gap = 14 + jitter(2)
    eye_half_width, eye_half_height = 7.5 + jitter(1), 9 + jitter(1.5)
    for side in (-1, 1):
        eye_x = centre_x + side * eye_gap
        draw.ellipse([eye_x - eye_half_width, eye_y - eye_half_height,
                      eye_x + eye_half_width, eye_y + eye_half_height], fill=(255, 255, 255))
        draw.ellipse([eye_x - 5.5, eye_y - 7, eye_x + 5.5, eye_y + eye_half_height], fill=iris)
        draw.ellipse([eye_x - 2.5, eye_y - 3, eye_x + 2.5, eye_y + 4], fill=(20, 15, 25))
        draw.ellipse([eye_x - 4, eye_y - 5, eye_x - 0.5, eye_y - 1.5], fill=(255, 255, 255))
        draw.line([eye_x - eye_half_width - 1, eye_y - eye_half_height + 2 + side * 0.5,
                   eye_x + eye_half_width + 1, eye_y - eye_half_height + 2 - side * 0.5],
                  fill=(30, 20, 25), width=3)
        # Eyebrows, in the hair colour, peeking under the bangs.
        draw.line([eye_x - 6, eye_y - eye_half_height - 6, eye_x + 6, eye_y - eye_half_height - 7],
                  fill=tuple(max(0, c - 40) for c in hair), width=2)

    # Blush, a hint of a nose and a small mouth.
    if rng.uniform() < 0.5:
        blush = Image.new("RGBA", image.size, (0, 0, 0, 0))
        blush_draw = ImageDraw.Draw(blush)
        for side in (-1, 1):
            x = centre_x + side * (eye_gap + 2)
            blush_draw.ellipse([x - 6, eye_y + 11, x + 6, eye_y + 15], fill=(255, 120, 140, 110))
        image.paste(blush, (0, 0), blush)
        draw = ImageDraw.Draw(image)
    draw.point([(centre_x, eye_y + 12)], fill=(200, 140, 130))
    mouth_y = centre_y + 23 + jitter(1.5)
    mouth_width = 3 + rng.uniform(0, 3)
    if rng.uniform() < 0.5:
        draw.arc([centre_x - mouth_width, mouth_y - 3, centre_x + mouth_width, mouth_y + 2],
                 start=20, end=160, fill=(150, 60, 60), width=2)
    else:
        draw.ellipse([centre_x - mouth_width * 0.6, mouth_y - 1.5, centre_x + mouth_width * 0.6, mouth_y + 2.5],
                     fill=(170, 60, 70))

    image = image.filter(ImageFilter.GaussianBlur(0.4))
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)


def write_demo_archive(url: str, count: int = DEMO_COUNT) -> str:
    """Writes `count` faces as PNGs in a zip at `url` (Kaggle's images/ layout); returns the URL."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(count):
            png = io.BytesIO()
            draw_face(index).save(png, format="PNG", optimize=False)
            archive.writestr(f"images/{index:05d}.png", png.getvalue())
    storage.write_bytes(url, buffer.getvalue())
    return url


def cached_demo_archive() -> str | None:
    """A local copy of the archive in the user's cache, drawn once per machine; None if the cache is not writable.

    Drawing the set takes seconds on every new workdir; the archive depends only on
    DEMO_VERSION and DEMO_COUNT (in its name), so a copy drawn once serves every run.
    """
    folder = os.environ.get("ANIMEGAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "animegan")
    path = os.path.join(folder, demo_archive_name())
    if os.path.exists(path):
        return path
    try:
        os.makedirs(folder, exist_ok=True)
        write_demo_archive(path)  # atomic: a reader never sees half an archive
    except OSError:
        return None
    return path


def ensure_demo_archive(workdir: str) -> str:
    """The demo archive inside the workdir (so that every worker can read it), copied from the cache."""
    url = storage.join(workdir, demo_archive_name())
    if not storage.exists(url):
        cached = cached_demo_archive()
        if cached:
            storage.upload_file(cached, url)
        else:
            write_demo_archive(url)
    return url
