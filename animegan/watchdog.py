"""A stuck worker ends in bounded time: how long one training step may wait for the other workers.

Every worker runs the same collective operations (a step's all-reduces, Ray
Train's report barrier), so one worker that is alive but stuck (a storage read
that never returns, a wedged GPU) holds all the others there for ever, and Ray's
health check, which only sees dead processes, never notices. Three guards, all
set by `--collective-timeout`, turn that into a worker failure, after which Ray
Train restarts the worker group from the latest checkpoint as for a crash
(`--max-failures`):

- in a step (fetching this worker's batch and the step's all-reduces), one
  watchdog thread per worker: past the timeout it aborts the process's
  collective operations, so a step waiting for another worker fails with
  DeadlineExceeded; if the step still has not returned after a grace period,
  this worker is the stuck one (its own read never returns) and it exits;
- in Ray Train's barriers (`ray.train.report`, the checkpoint broadcast), Ray's
  own collective timeout, which the driver sets for the run (`ray_settings`);
- a worker that is stopped altogether (SIGSTOP, a frozen VM) misses TensorFlow's
  coordination-service heartbeats, and TensorFlow aborts the others' collectives
  within seconds.

Each of these failures reaches the user as one CollectiveTimeout naming the worker
and the step. The timeout bounds a wait, never a whole step, so it must exceed the
longest time one worker legitimately spends outside the collectives while the
others wait in one: rank 0 uploading and checking a checkpoint, writing sample
grids and metrics (with storage retries), or evaluating at a report.

TensorFlow's own `CommunicationOptions(timeout_seconds=...)` is not used: it starts
a thread per collective operation that sleeps for the whole timeout, so at a
realistic step rate a timeout of minutes keeps tens of thousands of threads alive
(measured: about 65 new threads a second on this 2-core CPU at 16 steps a second).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from typing import Callable, Iterator

# Ray Train reads this in its controller (the driver passes it on) for the wait in its barriers.
RAY_COLLECTIVE_TIMEOUT_VARIABLE = "RAY_TRAIN_COLLECTIVE_TIMEOUT_S"
# How long after aborting the collectives a worker still stuck in its step exits by itself.
DEFAULT_GRACE_SECONDS = 30.0
STUCK_EXIT_STATUS = 1


class CollectiveTimeout(RuntimeError):
    """A step could not finish because a worker is stuck or gone; the message names the worker and the step."""


def ray_settings(timeout_seconds: float) -> dict[str, str]:
    """Environment for the driver's process, where Ray Train's controller takes its barrier timeout from."""
    return {RAY_COLLECTIVE_TIMEOUT_VARIABLE: f"{timeout_seconds:g}"}


class StepWatchdog:
    """Watches one worker's steps; as a context manager, turns the failures above into CollectiveTimeout.

        with StepWatchdog(config.collective_timeout, rank) as watchdog:
            for step in ...:
                with watchdog.step(step):
                    metrics = train_step(next_batch(iterator))
    """

    def __init__(self, timeout_seconds: float, rank: int, *, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                 abort: Callable[[str], None] | None = None, exit_process: Callable[[int], None] = os._exit):
        if not timeout_seconds > 0:
            raise ValueError(f"--collective-timeout must be a positive number of seconds, got {timeout_seconds}")
        self.timeout_seconds = float(timeout_seconds)
        self.grace_seconds = float(grace_seconds)
        self.rank = rank
        self.current_step: int | None = None  # the last step this worker entered
        self._abort = abort or _abort_collectives
        self._exit_process = exit_process
        self._entered_at: float | None = None  # while inside a step
        self._expired: str | None = None  # the message, once the timeout expired
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "StepWatchdog":
        self._thread = threading.Thread(target=self._watch, name="animegan-step-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        stalled = self.explain(error) if error is not None else None
        if stalled is not None:
            raise stalled from None
        return False

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Around the part of a step that waits for the other workers (and for this worker's batch)."""
        self.current_step = step
        self._entered_at = time.monotonic()
        try:
            yield
        finally:
            self._entered_at = None

    def explain(self, error: BaseException) -> CollectiveTimeout | None:
        """The CollectiveTimeout that `error` stands for, or None when it is another kind of failure."""
        if isinstance(error, CollectiveTimeout):
            return None
        where = (f"worker {self.rank}: step {self.current_step}" if self.current_step is not None
                 else f"worker {self.rank}, before its first step,")
        restart = "Ray Train restarts the worker group from the latest checkpoint while --max-failures allows"
        if self._expired is not None:
            return CollectiveTimeout(f"{self._expired}; {restart}")
        if _is_ray_barrier_timeout(error):
            return CollectiveTimeout(f"{where} waited more than {self.timeout_seconds:g} s (--collective-timeout) "
                                     f"for the other workers in Ray Train's report barrier: one is stuck or gone; "
                                     f"{restart}")
        if _is_aborted_collective(error):
            return CollectiveTimeout(f"{where} could not finish: {_what_happened(error)}; {restart}")
        return None

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_seconds / 10)
        while not self._stop.wait(poll):
            entered = self._entered_at
            if entered is None:
                continue
            waited = time.monotonic() - entered
            if self._expired is None and waited > self.timeout_seconds:
                self._expired = (f"worker {self.rank}: step {self.current_step} waited more than "
                                 f"{self.timeout_seconds:g} s (--collective-timeout) for its batch and the other "
                                 f"workers: one is stuck or gone")
                self._abort(self._expired)
            elif self._expired is not None and waited > self.timeout_seconds + self.grace_seconds:
                # Aborting the collectives did not end the step: this worker is the stuck one.
                print(f"animegan: {self._expired}, and it is this one: the step did not return within "
                      f"{self.grace_seconds:g} s of aborting its collective operations. Exiting, so that Ray Train "
                      f"restarts the worker group from the latest checkpoint.", file=sys.stderr, flush=True)
                self._exit_process(STUCK_EXIT_STATUS)
                return


def _abort_collectives(message: str) -> None:
    """Fails every collective operation of this process, now and later, with DeadlineExceeded and `message`."""
    from tensorflow.python.eager import context
    from tensorflow.python.framework import errors

    context.context().abort_collective_ops(errors.DEADLINE_EXCEEDED, message)


def _is_ray_barrier_timeout(error: BaseException) -> bool:
    """Ray Train's timeout in its barriers, as raised (wrapped by ray.get as RayTaskError(...), or not)."""
    for candidate in (error, getattr(error, "cause", None)):
        # By name: the class lives in Ray Train's internals, which may move.
        if candidate is not None and any(cls.__name__ == "BroadcastCollectiveTimeoutError"
                                         for cls in type(candidate).__mro__):
            return True
    return False


def _is_aborted_collective(error: BaseException) -> bool:
    """A TensorFlow error from a collective operation that another worker's absence ended."""
    try:
        import tensorflow as tf
    except ImportError:
        return False
    transient = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                 tf.errors.CancelledError)
    return isinstance(error, transient) and "ollective" in str(error)


def _what_happened(error: BaseException) -> str:
    """What TensorFlow's message says happened, in a few words, without its graph dump."""
    text = str(error)
    unhealthy = re.search(r"stopped sending heartbeats\):\s*((?:/job:\w+/replica:\d+/task:\d+\s*)+)", text)
    if unhealthy:
        tasks = re.findall(r"task:(\d+)", unhealthy.group(1))
        return f"worker {', '.join(tasks)} stopped sending TensorFlow's heartbeats"
    lines = [re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for marker in ("aborted by: ", "timed out"):
        for line in lines:
            if marker in line:
                return "TensorFlow: " + line.split("aborted by: ", 1)[-1][:200]
    return "TensorFlow: " + (lines[0] if lines else type(error).__name__)[:200]
