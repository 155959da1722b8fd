"""The dependency bounds in pyproject.toml hold for what is installed, and the Ray internals animegan
relies on are where it expects them.

animegan reaches into Ray Train in two places: its TensorFlow backend (animegan/tf_backend.py: the
Backend and worker group calls, the framework label) and Ray's checkpoint record, which
animegan/resume.py reads and sets aside. Ray moves such internals between minor versions, so
pyproject.toml bounds Ray's minor version; when a new Ray is allowed, these tests say what moved,
by name, instead of a run on a cluster failing (or silently losing a feature).
"""

from __future__ import annotations

import inspect
import json
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import REPO


def requirement(name: str) -> SpecifierSet:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [found] = [Requirement(text) for text in dependencies if Requirement(text).name == name]
    return found.specifier


@pytest.mark.parametrize("name", ["keras", "ray", "tensorflow", "tf-keras", "gcsfs", "fsspec"])
def test_the_installed_versions_satisfy_pyproject(name):
    assert requirement(name).contains(version(name)), f"{name} {version(name)} is outside {requirement(name)}"


def test_keras_is_new_enough_for_safe_mode_to_hold():
    # generate loads generator.keras from a shared workdir with safe_mode=True.
    keras = requirement("keras")
    for vulnerable in ["3.8.0", "3.10.0", "3.11.2"]:  # CVE-2025-1550, -8747/-9906, -9905
        assert not keras.contains(vulnerable), vulnerable


def test_ray_is_bounded_below_its_next_minor_version():
    installed = Version(version("ray"))
    ray = requirement("ray")
    assert ray.contains(str(installed))
    assert not ray.contains(f"{installed.major}.{installed.minor + 1}.0")


def test_the_ray_train_internals_of_the_tensorflow_backend_are_where_it_expects():
    from ray.train._internal.base_worker_group import BaseWorkerGroup
    from ray.train.backend import Backend, BackendConfig
    from ray.train.tensorflow import TensorflowTrainer
    from ray.train.v2._internal.util import TrainingFramework

    from animegan.tf_backend import MultiWorkerBackend, MultiWorkerConfig, _framework

    # tf_backend falls back to no framework label when this import fails: fail here instead.
    assert _framework() is TrainingFramework.TENSORFLOW
    assert MultiWorkerConfig().backend_cls is MultiWorkerBackend and issubclass(MultiWorkerConfig, BackendConfig)
    assert list(inspect.signature(Backend.on_start).parameters) == ["self", "worker_group", "backend_config"]
    # The worker group Ray hands to on_start: execute(fn, *args) and execute_single_async(rank, fn, *args).
    from ray.train.v2._internal.execution.worker_group import WorkerGroup

    assert issubclass(WorkerGroup, BaseWorkerGroup)
    for method, leading in [("execute", 1), ("execute_single_async", 2)]:
        kinds = [parameter.kind for parameter in inspect.signature(getattr(WorkerGroup, method)).parameters.values()]
        assert kinds[1:leading + 2] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * leading + [
            inspect.Parameter.VAR_POSITIONAL], method
    assert "tensorflow_config" in inspect.signature(TensorflowTrainer.__init__).parameters


def test_ray_train_report_takes_the_arguments_training_passes():
    import ray.train

    parameters = inspect.signature(ray.train.report).parameters
    # checkpoint_dir_name: animegan's folder names; checkpoint_upload_fn: rank 0's retried uploader.
    assert {"metrics", "checkpoint", "checkpoint_dir_name", "checkpoint_upload_fn"} <= set(parameters)


def test_the_ray_tune_internals_of_sweeps_are_where_they_expect():
    from ray.train.v2.api.callback import UserCallback
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    from animegan.sweep_schedulers import _population_based_training

    # sweep_trial.TrialReports: what Ray Train's controller hands a callback after each report.
    assert list(inspect.signature(UserCallback.after_report).parameters) == [
        "self", "run_context", "metrics", "checkpoint"]
    # sweep_schedulers' PBT reads the clock's name from Ray's and turns its PAUSE into CONTINUE.
    pbt = _population_based_training()(horizon=64, time_attr="images_seen", hyperparam_mutations={"lr": [1, 2]})
    assert isinstance(pbt, PopulationBasedTraining) and pbt._time_attr == "images_seen"
    assert {TrialScheduler.PAUSE, TrialScheduler.CONTINUE} <= set(vars(TrialScheduler).values())


def test_rays_checkpoint_record_is_named_and_laid_out_as_resume_reads_it():
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                                _TrainingResultState)

    from animegan.resume import RAY_SNAPSHOT

    assert CHECKPOINT_MANAGER_SNAPSHOT_FILENAME == RAY_SNAPSHOT
    assert "ray_version" in _CheckpointManagerState.model_fields
    assert "checkpoint_dir_name" in _TrainingResultState.model_fields


@pytest.mark.ray
def test_the_record_a_real_run_leaves_names_its_checkpoints_where_resume_finds_them(tiny_run):
    import ray

    from animegan.resume import RAY_SNAPSHOT, _checkpoint_names

    record = json.loads(Path(tiny_run.layout.workdir, "checkpoints", RAY_SNAPSHOT).read_text())
    assert record["ray_version"] == ray.__version__
    assert set(_checkpoint_names(record)) == {"checkpoint-00000030", "checkpoint-00000060"}
