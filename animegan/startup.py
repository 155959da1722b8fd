"""Where the time from the command's start to the first training step goes.

The driver marks the end of each of its phases (resolving the config and data,
starting Ray) and hands its marks to the workers in the loop config; rank 0 adds
its own (worker start, TensorFlow import, models, checkpoint scan, dataset,
first step including tracing), prints one line and writes `startup.json` to the
workdir, which benchmarks/startup.py reads. Marks are wall-clock times
(`time.time()`), comparable across the processes of one machine.
"""

from __future__ import annotations

import json
import time
from typing import Callable

_command_started_at: float | None = None


def command_started() -> None:
    """Called first thing by the command line: the origin of the next run's start-up clock."""
    global _command_started_at
    _command_started_at = time.time()


class StartupClock:
    """Named marks; each phase lasts from the previous mark to its own."""

    def __init__(self, marks: list[tuple[str, float]] | None = None):
        self.marks: list[tuple[str, float]] = [tuple(mark) for mark in marks or []]

    @classmethod
    def for_run(cls) -> "StartupClock":
        """A clock from the command's start (or from now, when no command started this run, as in tests)."""
        global _command_started_at
        origin, _command_started_at = _command_started_at or time.time(), None
        return cls([("command", origin)])

    def mark(self, phase: str) -> None:
        self.marks.append((phase, time.time()))

    def phases(self) -> dict[str, float]:
        """Seconds per phase, in order (a phase marked twice adds up)."""
        seconds: dict[str, float] = {}
        for (_, previous), (phase, at) in zip(self.marks, self.marks[1:]):
            seconds[phase] = seconds.get(phase, 0.0) + at - previous
        return seconds

    def total(self) -> float:
        return self.marks[-1][1] - self.marks[0][1] if len(self.marks) > 1 else 0.0

    def summary(self) -> str:
        parts = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in self.phases().items())
        return f"First step {self.total():.1f} s after the command started ({parts})"

    def write(self, url: str, log: Callable[[str], None] = print) -> None:
        from animegan import storage
        from animegan.retries import call_with_retries

        log(self.summary())
        document = {"seconds_to_first_step": self.total(), "phases": self.phases(), "marks": self.marks}
        text = json.dumps(document, indent=2) + "\n"
        call_with_retries(lambda: storage.write_text(url, text), what=f"writing {url}", url=url)
