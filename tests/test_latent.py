"""Latent walks: slerp's geometry, the walks' end points, and the pictures `animegan interpolate` writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from animegan.cli import main
from animegan.generation import generate_images, load_generator, noise_for
from animegan.latent import slerp, walk_noise
from tests.support.generators import write_exported_generator

CELL = 64 + 2  # a grid cell: the image and its gap


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(write_exported_generator(tmp_path_factory.mktemp("run") / "workdir"))


def test_slerp_follows_the_great_circle_at_constant_speed():
    rng = np.random.default_rng(0)
    start, end = rng.standard_normal(300), rng.standard_normal(300)
    end *= np.linalg.norm(start) / np.linalg.norm(end)
    points = slerp(start, end, np.linspace(0, 1, 9))
    assert np.allclose(points[0], start) and np.allclose(points[-1], end)
    # Equal norms stay equal all along; a straight line would sag towards the centre.
    assert np.allclose(np.linalg.norm(points, axis=1), np.linalg.norm(start))
    assert np.linalg.norm((start + end) / 2) < 0.8 * np.linalg.norm(start)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    angles = np.arccos(np.clip(np.sum(unit[1:] * unit[:-1], axis=1), -1, 1))
    assert np.allclose(angles, angles[0])


def test_slerp_of_parallel_vectors_is_a_straight_line():
    points = slerp(np.array([1.0, 2.0]), np.array([2.0, 4.0]), np.array([0.0, 0.5, 1.0]))
    assert np.allclose(points, [[1, 2], [1.5, 3], [2, 4]])
    with pytest.raises(ValueError, match=r"two vectors of the same length, got shapes \(2,\) and \(3,\)"):
        slerp(np.zeros(2), np.zeros(3), np.array([0.5]))


def test_walks_join_the_noise_of_generated_images():
    walks = walk_noise(seed=5, pairs=3, steps=7, noise_dim=16)
    assert walks.shape == (3, 7, 16) and walks.dtype == np.float32
    ends = noise_for(5, range(6), 16)
    assert np.allclose(walks[:, 0], ends[0::2]) and np.allclose(walks[:, -1], ends[1::2])


def test_grid_has_a_row_per_walk_and_a_column_per_step(workdir, tmp_path, capsys):
    out = tmp_path / "walks.png"
    assert main(["interpolate", "--checkpoint", workdir, "--out", str(out), "--steps", "5", "--pairs", "3",
                 "--seed", "4"]) == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (3 * CELL + 2, 5 * CELL + 2, 3)
    # Walk p starts at `generate --seed 4` image 2p and ends at image 2p+1.
    ends = generate_images(load_generator(workdir), 4, range(6))
    for pair in range(3):
        first = grid[2 + pair * CELL:2 + pair * CELL + 64, 2:66]
        last = grid[2 + pair * CELL:2 + pair * CELL + 64, 2 + 4 * CELL:2 + 4 * CELL + 64]
        assert np.abs(first.astype(int) - ends[2 * pair]).max() <= 1
        assert np.abs(last.astype(int) - ends[2 * pair + 1]).max() <= 1
    assert "Wrote 3 walks of 5 steps" in capsys.readouterr().out


def test_gif_goes_there_and_back_with_every_walk_in_each_frame(workdir, tmp_path):
    out = tmp_path / "walks.gif"
    assert main(["interpolate", "--checkpoint", workdir, "--out", str(out), "--steps", "6", "--pairs", "5"]) == 0
    with Image.open(out) as animation:
        assert animation.format == "GIF" and animation.n_frames == 2 * 6 - 2
        columns = math.ceil(math.sqrt(5))
        assert animation.size == (columns * CELL + 2, 2 * CELL + 2)
        frames = []
        for number in range(animation.n_frames):
            animation.seek(number)
            frames.append(np.asarray(animation.convert("RGB")))
    # Frame 6 + k is step 4 - k on the way back.
    assert np.array_equal(frames[6], frames[4]) and np.array_equal(frames[9], frames[1])
    assert not np.array_equal(frames[0], frames[5])


@pytest.mark.parametrize("arguments, message", [
    (["--steps", "1"], "--steps must be at least 2 (the two end points), got 1"),
    (["--pairs", "0"], "--pairs must be a positive integer, got 0"),
    (["--seed", "-1"], "--seed must not be negative, got -1"),
    (["--out", "walks.jpg"], "--out must end in .png (a grid) or .gif (an animation), got 'walks.jpg'"),
])
def test_bad_interpolate_arguments_are_one_line_errors(tmp_path, capsys, arguments, message):
    status = main(["interpolate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "walks.png"), *arguments])
    assert status == 2
    assert capsys.readouterr().err == f"animegan: error: {message}\n"
