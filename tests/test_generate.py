"""Generation: the same seed gives the same images, from the exported model or from a checkpoint,
whatever the batch size; previews show what the pipeline delivers."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from animegan.cli import main
from animegan.generation import generate_images, load_generator, noise_for
from tests.support.images import write_folder


def test_noise_rows_depend_only_on_seed_and_index():
    assert np.array_equal(noise_for(3, [5, 9], 16), noise_for(3, [9, 5], 16)[::-1])
    assert not np.array_equal(noise_for(3, [5], 16), noise_for(4, [5], 16))


def test_same_seed_same_images_and_a_grid(tiny_run, tmp_path):
    workdir = tiny_run.layout.workdir
    assert main(["generate", "--checkpoint", workdir, "--num", "6", "--out", str(tmp_path / "a"),
                 "--seed", "1", "--grid", str(tmp_path / "grid.png")]) == 0
    assert main(["generate", "--checkpoint", workdir, "--num", "6", "--out", str(tmp_path / "b"),
                 "--seed", "1", "--batch-size", "4"]) == 0
    assert main(["generate", "--checkpoint", workdir, "--num", "6", "--out", str(tmp_path / "c"),
                 "--seed", "2"]) == 0
    names = sorted(path.name for path in (tmp_path / "a").glob("*.png"))
    assert names == [f"{index:06d}.png" for index in range(6)]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert Image.open(tmp_path / "a" / name).size == (64, 64)
    assert any((tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes() for name in names)
    assert Image.open(tmp_path / "grid.png").size == (3 * 66 + 2, 2 * 66 + 2)


def test_inference_mode_images_vary_with_the_noise(tiny_run):
    # Batch-norm moving statistics must have caught up with training: otherwise every
    # inference-mode image collapses to the same flat grey.
    images = generate_images(load_generator(tiny_run.layout.workdir), 0, range(8)).astype(np.float32)
    assert images.std(axis=0).mean() > 2.0  # pixel values differ between images by whole grey levels


def test_checkpoint_and_exported_generator_agree(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run.layout.workdir, workdir)
    exported = load_generator(str(workdir))
    assert exported.source.endswith("generator.keras") and exported.step == 60
    (workdir / "generator.keras").unlink()
    from_checkpoint = load_generator(str(workdir))
    assert from_checkpoint.source.endswith("checkpoint-00000060") and from_checkpoint.step == 60
    indices = list(range(5))
    assert np.array_equal(generate_images(exported, 0, indices), generate_images(from_checkpoint, 0, indices))


def test_preview_writes_a_grid_of_augmented_images(tmp_path):
    write_folder(tmp_path / "faces", 12, "JPEG")
    assert main(["data", "preview", "--data", str(tmp_path / "faces"), "--out", str(tmp_path / "preview.png"),
                 "--num", "9"]) == 0
    grid = np.asarray(Image.open(tmp_path / "preview.png"))
    assert grid.shape == (3 * 66 + 2, 3 * 66 + 2, 3)
    assert grid[2:66, 2:66].std() > 10  # a picture, not an empty tile
