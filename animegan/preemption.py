"""Preemption: on SIGTERM the workers finish their step, rank 0 checkpoints it, and the run exits to be resumed.

A spot VM (GCE, GKE) gets about 30 s between SIGTERM and its end; `ray job stop`
sends SIGTERM too. The driver catches it (`sigterm_stops_training`) and raises a
flag in a small Ray actor (`StopNotice`) that travels to the workers with the
loop's config; each worker watches that flag from a thread (`StopWatcher`).

The workers run the same collective operations, so they must stop at the same
step, and a flag seen by one worker decides nothing until all agree: at every
step where they already synchronise with the host (a metrics row: --log-every,
checkpoints, reports), they add up their flags in one small all-reduce
(training.py), and all see the same sum. A positive sum ends the loop at that
step: rank 0 writes the checkpoint of that step (no evaluation, no samples),
status.json says "preempted", and the driver exits with PREEMPTED_EXIT_STATUS.
The same command (a job's retry, a RayJob's next attempt) resumes at the next
step: nothing trained is lost. The wait is at most --log-every steps plus the
checkpoint's upload: keep both well within the ~30 s a spot VM gives.

Only the driver's SIGTERM is handled here: workers on a VM that is shut down
whole are Ray's to stop (Ray Train restarts the group from the latest checkpoint).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

# 128 + SIGTERM: what a shell reports for a process ended by SIGTERM; job supervisors retry on it.
PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM
PREEMPTED = "preempted"  # status.json's status of a run stopped this way
POLL_SECONDS = 0.5  # how often a worker looks at the notice


class StopNotice:
    """A Ray actor (`create_notice`) holding one flag: the driver asks the run to stop."""

    def __init__(self):
        self._requested = False

    def request(self) -> None:
        self._requested = True

    def requested(self) -> bool:
        return self._requested


def create_notice():
    """The run's StopNotice actor: no CPU, on any node."""
    import ray

    return ray.remote(num_cpus=0)(StopNotice).remote()


@contextlib.contextmanager
def sigterm_stops_training(notice, log: Callable[[str], None] = print) -> Iterator[None]:
    """While inside, SIGTERM asks the workers (through `notice`) to checkpoint their step and stop.

    Outside the main thread (a sweep's trial) Python takes no signal handler: nothing changes there.
    The previous handler comes back on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        log("SIGTERM: the workers finish their step, checkpoint it and stop; run the same command again to "
            "resume after it")
        notice.request.remote()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopWatcher:
    """In a worker: whether the driver asked the run to stop, looked up from a thread every POLL_SECONDS.

    `notice` None (a sweep's trial, a test) never asks.
    """

    def __init__(self, notice):
        self._notice = notice
        self._requested = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "StopWatcher":
        if self._notice is not None:
            self._thread = threading.Thread(target=self._watch, name="animegan-stop-watcher", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def _watch(self) -> None:
        import ray

        while not self._done.wait(POLL_SECONDS):
            try:
                if ray.get(self._notice.requested.remote(), timeout=10):
                    self._requested.set()
                    return
            except Exception:  # the driver is gone or slow: the run ends its own way, or the next look answers
                continue
