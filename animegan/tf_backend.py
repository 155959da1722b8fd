"""The TensorflowTrainer's backend: TF_CONFIG on every worker, and no TensorFlow in Ray Train's controller.

Ray's own `TensorflowConfig` lives in `ray.train.tensorflow`, whose package
imports TensorFlow; the controller actor unpickles the backend config, so it
paid a TensorFlow import (about 7 s of CPU on a 2-core machine, and some
400 MB of memory on the head node) before it started any worker, on every run,
retry and tuning trial. This backend does what Ray's does (each worker finds a
free port, then every worker gets the same TF_CONFIG with its own index, for
`MultiWorkerMirroredStrategy`) from a module that imports no TensorFlow.

It leaves out one thing Ray's backend does: set TF_USE_LEGACY_KERAS=1, which
would make `tf.keras` mean tf-keras. animegan uses Keras 3 (`import keras`)
throughout and never `tf.keras`.
"""

from __future__ import annotations

import json
import os
import socket

import ray
from ray.train.backend import Backend, BackendConfig


def _framework():
    # For Ray Train's run state (the dashboard shows the framework and its version).
    try:
        from ray.train.v2._internal.util import TrainingFramework
    except ImportError:  # an internal module: its absence costs only the dashboard's label
        return None
    return TrainingFramework.TENSORFLOW


class MultiWorkerConfig(BackendConfig):
    """Pass as `TensorflowTrainer(..., tensorflow_config=MultiWorkerConfig())`."""

    @property
    def backend_cls(self):
        return MultiWorkerBackend

    @property
    def framework(self):
        return _framework()


class MultiWorkerBackend(Backend):
    def on_start(self, worker_group, backend_config: MultiWorkerConfig) -> None:
        addresses = worker_group.execute(worker_address)
        ray.get([worker_group.execute_single_async(index, set_tf_config, addresses, index)
                 for index in range(len(addresses))])


def worker_address() -> str:
    """host:port of a free port on this worker's node, for its gRPC server."""
    host = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def tf_config(addresses: list[str], index: int) -> dict:
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def set_tf_config(addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(tf_config(addresses, index))
