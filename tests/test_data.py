"""Data: every format and mode decodes, bad files are skipped and counted, sources list what they should,
augmentation does what it says (eagerly and inside tf.data), and workers' shards are disjoint and complete."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from animegan.data.augment import Augmentation, augment_batch, rotation_shift_transforms
from animegan.data.decode import decode_image, problem_with
from animegan.data.pipeline import (DataPosition, ReadStats, encoded_images, epoch_order, to_uint8,
                                    training_dataset, worker_shard)
from animegan.data.sources import FileSource, ZipSource, list_images, open_source
from tests.support.images import encode, pattern, write_folder

# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("image_format, mode", [
    ("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("PNG", "LA"),
    ("WEBP", "RGB"), ("WEBP", "RGBA"), ("BMP", "RGB"), ("GIF", "P"),
])
def test_every_format_and_mode_decodes_to_64x64_rgb(image_format, mode):
    source = pattern(64, 64)
    data = encode(source, image_format, mode)
    assert problem_with(data) is None
    image = decode_image(tf.constant(data)).numpy()
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    if mode in {"L", "LA"}:
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    if image_format in {"PNG", "BMP"} and mode == "RGB":
        assert np.array_equal(image, source)  # lossless formats come back exactly


def test_transparency_is_composited_over_white():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent on the left half
    rgba[:, 32:, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    image = decode_image(tf.constant(buffer.getvalue())).numpy().astype(np.float32)
    assert np.allclose(image[:, :30], 255.0)  # transparent -> white
    assert np.allclose(image[:, 34:], [255.0, 0.0, 0.0])  # opaque red stays red


def test_non_square_images_are_centre_cropped_then_resized():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :100] = [255, 0, 0]
    wide[:, 100:200] = [0, 255, 0]  # the centre square is all green
    wide[:, 200:] = [0, 0, 255]
    image = decode_image(tf.constant(encode(wide, "PNG"))).numpy().astype(np.float32)
    assert image.shape == (64, 64, 3)
    assert np.allclose(image, [0.0, 255.0, 0.0], atol=1.0)


def test_large_images_are_resized_with_area_averaging():
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = decode_image(tf.constant(encode(np.stack([checker] * 3, -1), "PNG"))).numpy().astype(np.float32)
    assert np.allclose(image, 127.5, atol=1.0)  # a 1-pixel checkerboard averages to grey, no aliasing


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, I am a text file", "not an image"),
    (encode(pattern(), "JPEG")[:-300], "truncated JPEG"),
    (encode(pattern(), "PNG")[:-40], "truncated PNG"),
    (encode(pattern(), "WEBP")[:-50], "truncated WebP"),
])
def test_bad_bytes_are_named(data, reason):
    assert reason in problem_with(data)


# ----------------------------------------------------------------------------- sources


def test_folder_source_lists_images_recursively_and_ignores_the_rest(tmp_path):
    write_folder(tmp_path / "a", 3, "PNG")
    write_folder(tmp_path / "a" / "deeper", 2, "JPEG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._00000.png").write_bytes(b"macOS resource fork")
    items = list_images(open_source(str(tmp_path / "a")))
    assert len(items) == 5
    assert all(item.endswith((".png", ".jpg")) for item in items)
    assert items == sorted(items)


def test_glob_source(tmp_path):
    write_folder(tmp_path, 3, "PNG")
    write_folder(tmp_path, 2, "JPEG")
    source = open_source(str(tmp_path / "*.jpg"))
    assert isinstance(source, FileSource)
    assert len(list_images(source)) == 2


def test_zip_source_reads_kaggle_layout_in_place(tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for index in range(4):
            zipped.writestr(f"images/{index}.jpg", encode(pattern(seed=index), "JPEG"))
        zipped.writestr("__MACOSX/images/._0.jpg", b"junk")
        zipped.writestr("README.txt", b"not an image")
    source = open_source(str(archive))
    assert isinstance(source, ZipSource)
    items = list_images(source)
    assert items == [f"images/{index}.jpg" for index in range(4)]
    read = dict(source.read(items[:2]))
    assert problem_with(read["images/0.jpg"]) is None


@pytest.mark.parametrize("make_url, message", [
    (lambda tmp: str(tmp / "missing"), "no such file, folder, bucket or prefix"),
    (lambda tmp: str(tmp), "no images (.bmp, .gif, .jpeg, .jpg, .png, .webp) found at"),
    (lambda tmp: "nosuchscheme://bucket/x", "unknown URL scheme 'nosuchscheme://'"),
    (lambda tmp: str(tmp / "missing.zip"), "no such zip archive"),
])
def test_source_errors_are_clear(tmp_path, make_url, message):
    with pytest.raises(ValueError) as error:
        list_images(open_source(make_url(tmp_path)))
    assert message in str(error.value)


def test_a_file_that_is_not_a_zip_is_reported(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="is not a readable zip archive"):
        list_images(open_source(str(fake)))


# ----------------------------------------------------------------------------- augmentation


def test_rotation_transform_by_pi_turns_the_image_upside_down():
    image = pattern(64, 64).astype(np.float32)[None]
    transforms = rotation_shift_transforms(tf.constant([math.pi]), tf.constant([0.0]), tf.constant([0.0]),
                                           64.0, 64.0)
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image, transforms=transforms, output_shape=[64, 64], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST").numpy()
    assert np.allclose(rotated[0], image[0][::-1, ::-1], atol=1e-3)


def test_shift_transform_moves_pixels_and_repeats_the_edge():
    image = pattern(64, 64).astype(np.float32)[None]
    transforms = rotation_shift_transforms(tf.constant([0.0]), tf.constant([3.0]), tf.constant([0.0]), 64.0, 64.0)
    shifted = tf.raw_ops.ImageProjectiveTransformV3(
        images=image, transforms=transforms, output_shape=[64, 64], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST").numpy()[0]
    assert np.allclose(shifted[:, 3:], image[0][:, :-3], atol=1e-3)  # moved right by 3 pixels
    assert np.allclose(shifted[:, :3], image[0][:, :1], atol=1e-3)  # nearest fill repeats the edge column


def _batch(count: int = 16) -> tf.Tensor:
    return tf.constant(np.stack([pattern(64, 64, seed=index) for index in range(count)]).astype(np.float32))


def test_flip_only_mirrors_some_images_and_keeps_the_others():
    images = _batch()
    out = augment_batch(images, tf.constant([1, 2]), Augmentation(flip=True, rotation_degrees=0,
                                                                  shift_fraction=0)).numpy()
    flipped = [np.array_equal(out[i], images[i].numpy()[:, ::-1]) for i in range(16)]
    kept = [np.array_equal(out[i], images[i].numpy()) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 16


def test_no_augmentation_is_the_identity_and_seeds_are_deterministic():
    images = _batch()
    identity = augment_batch(images, tf.constant([0, 0]), Augmentation(False, 0.0, 0.0))
    assert np.array_equal(identity.numpy(), images.numpy())
    full = Augmentation()
    first = augment_batch(images, tf.constant([5, 6]), full).numpy()
    again = augment_batch(images, tf.constant([5, 6]), full).numpy()
    other = augment_batch(images, tf.constant([7, 8]), full).numpy()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == images.shape


def test_augmentation_inside_tf_data_matches_eager():
    images = _batch(8)
    augmentation = Augmentation(True, 10.0, 0.1)
    seed = tf.constant([3, 4], tf.int64)
    eager = augment_batch(images, seed, augmentation).numpy()
    dataset = tf.data.Dataset.from_tensors((images, seed)).map(
        lambda batch, batch_seed: augment_batch(batch, batch_seed, augmentation))
    in_graph = next(iter(dataset)).numpy()
    assert np.allclose(eager, in_graph, atol=1e-4)
    assert not np.allclose(eager, images.numpy())  # it did change the images


# ----------------------------------------------------------------------------- sharding and the pipeline


@pytest.mark.parametrize("num_items, world_size", [(100, 1), (100, 2), (101, 4), (10, 3)])
def test_worker_shards_are_disjoint_equal_and_cover_all_but_the_remainder(num_items, world_size):
    order = epoch_order(num_items, seed=0, epoch=0)
    shards = [worker_shard(order, rank, world_size) for rank in range(world_size)]
    flat = np.concatenate(shards)
    assert len(set(flat)) == len(flat)  # disjoint
    assert {len(shard) for shard in shards} == {num_items // world_size}  # equal: workers stay in lock step
    assert len(flat) == num_items - num_items % world_size


def test_every_item_is_read_over_epochs_and_order_changes_per_epoch():
    assert not np.array_equal(epoch_order(50, 0, 0), epoch_order(50, 0, 1))
    assert np.array_equal(epoch_order(50, 0, 3), epoch_order(50, 0, 3))
    seen = set()
    for epoch in range(3):
        order = epoch_order(50, 0, epoch)
        for rank in range(3):
            seen.update(worker_shard(order, rank, 3).tolist())
    assert seen == set(range(50))  # the remainder rotates, so nothing is left out for long


def test_pipeline_delivers_the_decoded_pixels_unaugmented(tmp_path):
    write_folder(tmp_path, 20, "PNG")
    source = open_source(str(tmp_path))
    dataset = training_dataset(source, list_images(source), batch_size=8, repeat=False)
    batches = [batch.numpy() for batch in dataset]
    assert len(batches) == 2
    for batch in batches:
        assert batch.shape == (8, 64, 64, 3) and batch.dtype == np.uint8
    # Lossless files come out exactly: the host neither augments nor rescales (the step does, on the device).
    decoded = {bytes(decode_image(tf.constant(data)).numpy()) for _, data in source.read(list_images(source))}
    assert {bytes(image) for batch in batches for image in batch} <= decoded
    options = dataset.options()
    assert options.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    write_folder(tmp_path, 10, "PNG")
    (tmp_path / "bad1.jpg").write_bytes(encode(pattern(), "JPEG")[:-300])
    (tmp_path / "bad2.png").write_bytes(b"this is not a png")
    (tmp_path / "bad3.png").write_bytes(b"")
    source = open_source(str(tmp_path))
    items = list_images(source)
    stats = ReadStats()
    read = list(encoded_images(source, items, rank=0, world_size=1, seed=0, stats=stats, repeat=False))
    assert len(read) == 10
    assert stats.skipped == 3 and stats.read == 10
    assert any("truncated JPEG" in example for example in stats.examples)
    # And the tf.data pipeline runs straight through them.
    batches = list(training_dataset(source, items, batch_size=5, stats=ReadStats(), repeat=False))
    assert len(batches) == 2


def test_resume_position_skips_the_items_already_consumed(tmp_path):
    write_folder(tmp_path, 12, "PNG")
    source = open_source(str(tmp_path))
    items = list_images(source)
    full = list(encoded_images(source, items, rank=0, world_size=1, seed=4, repeat=False))
    resumed = list(encoded_images(source, items, rank=0, world_size=1, seed=4,
                                  position=DataPosition(epoch=0, skip_items=5), repeat=False))
    assert resumed == full[5:]


def test_too_few_images_for_a_batch_is_an_error(tmp_path):
    write_folder(tmp_path, 3, "PNG")
    source = open_source(str(tmp_path))
    with pytest.raises(ValueError, match="3 images cannot fill a batch of 8 on each of 1 workers"):
        training_dataset(source, list_images(source), batch_size=8)


def test_to_uint8_round_trips_the_unit_range():
    values = np.array([-1.0, 0.0, 1.0, 2.0, -3.0], np.float32)
    assert to_uint8(values).tolist() == [0, 128, 255, 255, 0]


# ----------------------------------------------------------------------------- the real faces


def test_real_kaggle_faces_zip_streams_through_the_pipeline(real_faces):
    source = open_source(str(real_faces))
    items = list_images(source)
    assert len(items) == 10_000
    assert all(item.startswith("images/") and item.endswith(".jpg") for item in items)
    stats = ReadStats()
    batch = next(iter(training_dataset(source, items, batch_size=64, stats=stats))).numpy()
    assert batch.shape == (64, 64, 64, 3)
    assert stats.skipped == 0
    assert batch.dtype == np.uint8 and batch.std() > 25  # real pictures, not blank frames
