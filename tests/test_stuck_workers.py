"""A stuck worker ends in bounded time (animegan/watchdog.py): a worker stopped with SIGSTOP, or alive but
stuck in a read that never returns, costs --collective-timeout plus a worker-group restart, never a hang.

The stuck read is a named pipe among the training images: opening it for reading blocks until a
writer comes, as a storage read can, while the process stays alive and answers every health check.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from animegan import storage
from animegan.config import TrainConfig
from animegan.launcher import run_training
from animegan.watchdog import RAY_COLLECTIVE_TIMEOUT_VARIABLE, STUCK_EXIT_STATUS, ray_settings
from tests.conftest import REPO, TINY_MODEL
from tests.support.images import write_folder
from tests.support.processes import is_running

TWO_WORKERS = dict(batch_size=8, workers=2, cpus_per_worker=1, log_every=5, checkpoint_every=10,
                   sample_every=1000, wandb_mode="disabled", **TINY_MODEL)
# Above the first step's tracing on a busy 2-core machine (about 15 s), which the timeout also bounds.
TEST_TIMEOUT = 60
# A new worker group on this machine: actors, TensorFlow import, models, checkpoint, first step.
RESTART_SECONDS = 240


def metric_steps(workdir: str) -> list[int]:
    return [json.loads(line)["step"] for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_config_refuses_a_timeout_that_is_not_positive():
    with pytest.raises(ValueError, match=r"--collective-timeout must be a positive number of seconds, got 0.0"):
        TrainConfig(collective_timeout=0.0).validate()
    assert TrainConfig().collective_timeout == 1800.0


def test_ray_train_still_takes_its_barrier_timeout_from_the_variable_animegan_sets():
    # Ray internals: if they move, Ray's barriers wait for ever again, so this fails loudly.
    from ray.train.v2._internal.constants import COLLECTIVE_TIMEOUT_S_ENV_VAR, ENV_VARS_TO_PROPAGATE

    assert COLLECTIVE_TIMEOUT_S_ENV_VAR == RAY_COLLECTIVE_TIMEOUT_VARIABLE
    assert RAY_COLLECTIVE_TIMEOUT_VARIABLE in ENV_VARS_TO_PROPAGATE  # driver -> controller, which builds the barrier
    assert ray_settings(90.0) == {RAY_COLLECTIVE_TIMEOUT_VARIABLE: "90"}


def test_each_guard_ends_in_one_collective_timeout_naming_the_worker_and_the_step():
    """The errors as Ray and TensorFlow raise them (real exception objects, no Ray run needed)."""
    import tensorflow as tf
    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import BroadcastCollectiveTimeoutError

    from animegan.watchdog import StepWatchdog

    watchdog = StepWatchdog(90, rank=1)
    assert watchdog.explain(ValueError("bad input")) is None
    before = watchdog.explain(BroadcastCollectiveTimeoutError(91.0, [0], 90.0))
    assert str(before).startswith("worker 1, before its first step, waited more than 90 s")
    with watchdog.step(42):
        pass
    restart = "Ray Train restarts the worker group from the latest checkpoint while --max-failures allows"
    # Ray Train's report barrier timed out; ray.get raises it wrapped in a RayTaskError subclass.
    barrier = RayTaskError("broadcast_from_rank_zero", "Traceback ...",
                           BroadcastCollectiveTimeoutError(91.0, [0], 90.0)).as_instanceof_cause()
    assert str(watchdog.explain(barrier)) == (
        f"worker 1: step 42 waited more than 90 s (--collective-timeout) for the other workers in Ray Train's "
        f"report barrier: one is stuck or gone; {restart}")
    # TensorFlow's coordination service saw a worker stop sending heartbeats and aborted the collectives.
    heartbeat = tf.errors.UnavailableError(None, None, (
        "Graph execution error:\n\n{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/"
        "replica:0/task:1/device:CPU:0}} Collective ops is aborted by: Error reported from /job:worker/task:0: The "
        "following tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:0\nThe tasks have "
        "crashed. Check the task logs for an earlier error."))
    assert str(watchdog.explain(heartbeat)) == (
        f"worker 1: step 42 could not finish: worker 0 stopped sending TensorFlow's heartbeats; {restart}")
    # A TensorFlow error that is not about the collectives stays what it is.
    assert watchdog.explain(tf.errors.InvalidArgumentError(None, None, "bad image")) is None


def test_a_worker_stuck_in_its_own_read_aborts_its_collectives_then_exits_with_the_step(tmp_path):
    pipe = tmp_path / "image.png"
    os.mkfifo(pipe)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from animegan.watchdog import StepWatchdog
        with StepWatchdog(2.0, rank=1, grace_seconds=2.0) as watchdog:
            with watchdog.step(17):
                open({str(pipe)!r}, "rb").read()  # no writer: blocks for ever
        print("not reached")
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == STUCK_EXIT_STATUS, result.stderr
    assert "not reached" not in result.stdout
    assert ("animegan: worker 1: step 17 waited more than 2 s (--collective-timeout) for its batch and the other "
            "workers: one is stuck or gone, and it is this one") in result.stderr
    assert elapsed < 60  # 4 s of waiting, plus importing TensorFlow to abort the collectives


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_stopped_worker_is_replaced_within_the_timeout_and_training_continues(ray_cluster, bucket, tmp_path, capfd,
                                                                                 record_property):
    from ray.util.state import list_actors

    faces = tmp_path / "faces"
    write_folder(faces, 64)
    workdir = f"{bucket}/run"
    config = TrainConfig(workdir=workdir, data=str(faces), steps=30, max_failures=2,
                         collective_timeout=TEST_TIMEOUT, **TWO_WORKERS)
    seen: dict = {}

    def stop_one_worker_after_the_first_checkpoint():
        try:
            wait_for(lambda: storage.exists(f"{workdir}/checkpoints/checkpoint-00000010/state.json"), 300,
                     "the first checkpoint")
            workers = list_actors(address=ray_cluster, filters=[("class_name", "=", "RayTrainWorker"),
                                                                ("state", "=", "ALIVE")])
            seen["pid"] = workers[0].pid
            os.kill(seen["pid"], signal.SIGSTOP)  # alive, but never runs again: no crash for Ray to see
            seen["stopped"] = time.monotonic()
        except BaseException as error:  # reported by the test thread below
            seen["error"] = error

    stopper = threading.Thread(target=stop_one_worker_after_the_first_checkpoint, daemon=True)
    stopper.start()
    try:
        outcome = run_training(config)
        recovered = time.monotonic() - seen.get("stopped", time.monotonic())
    finally:
        stopper.join(timeout=10)
        if "pid" in seen and is_running(seen["pid"]):
            os.kill(seen["pid"], signal.SIGKILL)
    assert "error" not in seen, seen.get("error")
    assert not is_running(seen["pid"])  # Ray killed the stopped worker when it restarted the group

    assert outcome.status == "finished" and outcome.step == 30
    captured = capfd.readouterr()
    output = captured.out + captured.err
    resumed = [int(step) for step in re.findall(r"Resuming from \S*/checkpoint-\d+ at step (\d+)", output)]
    assert len(resumed) == 1 and 10 <= resumed[0] < 30, output[-6000:]
    # The survivor's step ended with one clear error naming it, not Ray's health check minutes later.
    assert re.search(r"CollectiveTimeout: worker \d: step \d+ (waited more than|could not finish)", output), output[-5000:]
    record_property("seconds_from_stop_to_finished_run", round(recovered, 1))  # --junitxml keeps the measurement
    assert recovered < TEST_TIMEOUT + RESTART_SECONDS
    assert metric_steps(workdir) == [5, 10, 15, 20, 25, 30]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_worker_stuck_reading_fails_the_run_with_the_step_once_retries_are_spent(ray_cluster, tmp_path,
                                                                                   record_property):
    from ray.train.v2.api.exceptions import TrainingFailedError

    from animegan.failures import describe

    faces = tmp_path / "faces"
    write_folder(faces, 600)  # each worker's first chunk of the pipeline (256 images) within the first epoch
    pipe = faces / stuck_name(600, config_seed=0)
    os.mkfifo(pipe)  # read by one worker only, before its first batch, and never answered
    # Shorter than TEST_TIMEOUT: here the first step is meant to time out, tracing or not.
    config = TrainConfig(workdir=str(tmp_path / "run"), data=str(faces), steps=20, max_failures=0,
                         collective_timeout=30, **TWO_WORKERS)
    started = time.monotonic()
    try:
        with pytest.raises(TrainingFailedError) as failure:
            run_training(config)
    finally:
        _release_readers(pipe)
    elapsed = time.monotonic() - started
    message = describe(failure.value)
    assert re.fullmatch(r"CollectiveTimeout: worker \d: step 1 waited more than 30 s \(--collective-timeout\) "
                        r"for its batch and the other workers: one is stuck or gone; Ray Train restarts the worker "
                        r"group from the latest checkpoint while --max-failures allows", message), message
    record_property("seconds_from_start_to_failed_run", round(elapsed, 1))
    assert elapsed < 30 + RESTART_SECONDS  # a start of the worker group, then the timeout


def stuck_name(count: int, config_seed: int) -> str:
    """A name that sorts among `count` images so that one worker reads it early in the first epoch.

    Each worker's pipeline fills a chunk of GENERATOR_CHUNK images before its first batch; the
    worker whose shard holds the pipe must meet it within that chunk, and the other worker's
    chunk must come from the first epoch alone, or both would be stuck and neither would wait.
    """
    from animegan.data.pipeline import GENERATOR_CHUNK, epoch_order, items_per_worker

    per_worker = items_per_worker(count + 1, 2)
    assert per_worker >= GENERATOR_CHUNK
    order = list(epoch_order(count + 1, config_seed, 0))
    for index in range(1, count):
        # Names 00000.png...: "{index-1:05d}-stuck.png" sorts right after image index-1, at position index.
        position = order.index(index)
        if position < 2 * per_worker and position % per_worker < GENERATOR_CHUNK // 2:
            return f"{index - 1:05d}-stuck.png"
    raise AssertionError("no position for the stuck image")


def _release_readers(pipe) -> None:
    """Lets a reader still blocked on the pipe, if any, see its end (Ray kills the workers; belt and braces)."""
    try:
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # ENXIO: nobody is reading
