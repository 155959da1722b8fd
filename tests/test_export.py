"""`animegan export`: a SavedModel that plain TensorFlow serves, giving the package's images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from animegan.cli import main
from animegan.generation import generate_images, load_generator, noise_for
from tests.support.generators import write_exported_generator

# Run in a fresh interpreter in which importing animegan fails: whatever the SavedModel
# needs, it must get from TensorFlow alone.
PLAIN_TENSORFLOW = """
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "animegan":
            raise ImportError(f"{name} must not be needed to serve the export")
        return None

sys.meta_path.insert(0, Refuse())
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
inputs = serve.structured_input_signature[1]
outputs = serve.structured_outputs
images = serve(noise=tf.constant(np.load(sys.argv[2])))["images"].numpy()
np.save(sys.argv[3], images)
print(json.dumps({
    "inputs": {name: [spec.dtype.name, spec.shape.as_list()] for name, spec in inputs.items()},
    "outputs": {name: [spec.dtype.name, spec.shape.as_list()] for name, spec in outputs.items()},
    "imported": sorted(name for name in sys.modules if name.startswith("animegan")),
}))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(write_exported_generator(tmp_path_factory.mktemp("run") / "workdir", step=42))


def test_plain_tensorflow_serves_the_same_images_as_the_package(workdir, tmp_path, capsys):
    out = tmp_path / "saved"
    assert main(["export", "--checkpoint", workdir, "--out", str(out)]) == 0
    assert "signature 'serving_default', noise float32 [batch, 16] -> images uint8" in capsys.readouterr().out
    np.save(tmp_path / "noise.npy", noise_for(9, range(20), 16))

    result = subprocess.run([sys.executable, "-c", PLAIN_TENSORFLOW, str(out), str(tmp_path / "noise.npy"),
                             str(tmp_path / "images.npy")], capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"inputs": {"noise": ["float32", [None, 16]]},
                      "outputs": {"images": ["uint8", [None, 64, 64, 3]]}, "imported": []}
    served = np.load(tmp_path / "images.npy")
    expected = generate_images(load_generator(workdir), 9, range(20), batch_size=64)
    assert served.dtype == np.uint8 and np.array_equal(served, expected)
    info = json.loads((out / "export.json").read_text())
    assert (info["step"], info["noise_dim"], info["signature"]) == (42, 16, "serving_default")


def test_export_replaces_an_earlier_export_but_nothing_else(workdir, tmp_path, capsys):
    out = tmp_path / "saved"
    assert main(["export", "--checkpoint", workdir, "--out", str(out)]) == 0
    (out / "stale-file").write_text("from an earlier export")
    assert main(["export", "--checkpoint", workdir, "--out", str(out)]) == 0
    assert not (out / "stale-file").exists() and (out / "saved_model.pb").exists()

    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    capsys.readouterr()
    assert main(["export", "--checkpoint", workdir, "--out", str(other)]) == 2
    assert capsys.readouterr().err == (f"animegan: error: {other} exists and is not a SavedModel export "
                                       f"(it holds holiday.jpg); choose an empty or new folder\n")
    assert sorted(p.name for p in other.iterdir()) == ["holiday.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".animegan-export-")]


def test_export_to_object_storage_uploads_the_whole_saved_model(workdir, bucket):
    import gcsfs

    assert main(["export", "--checkpoint", workdir, "--out", f"{bucket}/models/faces"]) == 0
    remote = gcsfs.GCSFileSystem()
    names = sorted(path.split("/models/faces/", 1)[1] for path in remote.find(f"{bucket[5:]}/models/faces"))
    assert {"saved_model.pb", "export.json", "fingerprint.pb", "variables/variables.index"} <= set(names)
    assert any(name.startswith("variables/variables.data-") for name in names)


def test_export_without_a_generator_says_to_train_first(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    assert main(["export", "--checkpoint", str(tmp_path / "empty-run"), "--out", str(tmp_path / "saved")]) == 2
    assert "holds neither generator.keras nor a valid checkpoint; train first" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()
