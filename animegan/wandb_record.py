"""What the W&B run of a workdir already holds: its last logged step and its metrics' running summaries.

`<workdir>/wandb-logged.json` is written by rank 0's W&B thread (animegan/wandb_writer.py)
after the rows it logs, and read when a later session of the same run starts. It serves
two rules that W&B itself cannot keep across the sessions of a resumed run:

- No step is logged twice. W&B cannot overwrite a step: a session that resumes from its
  checkpoint repeats the steps after it, and would add a second point at every step the
  previous session logged past its last checkpoint. So a session logs only steps past
  `last_step`. This is the workdir's own rule, the same online and offline (an offline run
  has no server to ask); W&B's `resume_from` (rewinding a run on the server, a preview
  feature not every server has) and `fork_from` (a new run per resume) are not used.
- Summaries cover the whole run. `define_metric(summary="min")` aggregates in W&B's
  service, which starts empty in every session (wandb-core's runsummary), so a resumed
  session's summary would hold only its own minimum. The record carries the running
  aggregates from session to session, and the writer puts the whole run's values into
  the summary when a resumed session finishes.

The file names its run id and is ignored when the workdir's run id is another one (a run
started over). It is read from storage others can write to, so it is checked: a record
that is not what this module writes is ignored with a warning, never trusted in part.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from animegan import storage
from animegan.workdir import RunLayout

# What "best" is for each metric the run's summary keeps beside its last value. W&B is told
# through define_metric; the record keeps the same aggregates across sessions.
SUMMARIES = {
    "loss/d": "min",
    "loss/g": "min",
    "eval/fid": "min",  # FID and KID are distances to the real images: lower is better
    "eval/kid": "min",
    "eval/inception_score": "max",
    "perf/images_per_sec": "mean",
}
# A gs:// workdir takes one write per object and second at best; locally every logged row is recorded.
REMOTE_INTERVAL_SECONDS = 5.0


@dataclass
class Aggregate:
    """The running min, max, mean and last value of one metric over every session of the run."""

    last: float
    minimum: float
    maximum: float
    total: float
    count: int

    @classmethod
    def first(cls, value: float) -> "Aggregate":
        return cls(value, value, value, value, 1)

    def observe(self, value: float) -> None:
        self.last, self.total, self.count = value, self.total + value, self.count + 1
        self.minimum, self.maximum = min(self.minimum, value), max(self.maximum, value)

    def summary(self, kind: str) -> dict[str, float]:
        """The value W&B's summary holds for define_metric(summary=f"{kind},last")."""
        best = {"min": self.minimum, "max": self.maximum, "mean": self.total / self.count}[kind]
        return {kind: best, "last": self.last}

    def to_dict(self) -> dict[str, float]:
        return {"last": self.last, "min": self.minimum, "max": self.maximum, "total": self.total,
                "count": self.count}

    @classmethod
    def from_dict(cls, values: Any) -> "Aggregate":
        if not isinstance(values, dict) or set(values) != {"last", "min", "max", "total", "count"}:
            raise ValueError("a metric's entry is not last, min, max, total and count")
        numbers = [values[key] for key in ("last", "min", "max", "total")]
        if not all(_is_number(value) and math.isfinite(value) for value in numbers):
            raise ValueError("a metric's aggregate is not a finite number")
        count = values["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("a metric's count is not a positive integer")
        return cls(*(float(value) for value in numbers), count)


@dataclass
class LoggedRecord:
    """The record of one W&B run: read at a session's start, updated as it logs, saved on a schedule."""

    url: str
    run_id: str
    last_step: int | None = None  # None: W&B holds no step of this run yet
    metrics: dict[str, Aggregate] = field(default_factory=dict)
    interval_seconds: float = 0.0
    _saved_at: float = field(default=-math.inf, init=False, repr=False)
    _dirty: bool = field(default=False, init=False, repr=False)

    @classmethod
    def load(cls, layout: RunLayout, run_id: str, log: Callable[[str], None] = print) -> "LoggedRecord":
        """The workdir's record of this run, or an empty one (none yet, another run's, or not valid)."""
        url = layout.wandb_logged
        interval = 0.0 if storage.is_local(url) else REMOTE_INTERVAL_SECONDS
        record = cls(url, run_id, interval_seconds=interval)
        if not storage.exists(url):
            return record
        try:
            document = json.loads(storage.read_text(url))
            if not isinstance(document, dict) or document.get("run_id") != run_id:
                return record  # another run's: this one starts with nothing logged
            last_step = document.get("last_step")
            if last_step is not None and (not isinstance(last_step, int) or isinstance(last_step, bool)
                                          or last_step < 0):
                raise ValueError("last_step is not a step")
            metrics = document.get("metrics")
            if not isinstance(metrics, dict) or not set(metrics) <= set(SUMMARIES):
                raise ValueError("metrics is not an object of known metrics")
            record.last_step = last_step
            record.metrics = {key: Aggregate.from_dict(values) for key, values in metrics.items()}
        except (ValueError, UnicodeDecodeError) as error:
            log(f"W&B: ignoring {url} ({error}); steps this session repeats may be logged twice")
            return cls(url, run_id, interval_seconds=interval)
        return record

    def observe(self, step: int, row: dict[str, Any]) -> None:
        """Takes a row W&B has just been given."""
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        for key, value in row.items():
            if key in SUMMARIES and _is_number(value) and math.isfinite(value):
                if key in self.metrics:
                    self.metrics[key].observe(float(value))
                else:
                    self.metrics[key] = Aggregate.first(float(value))
        self._dirty = True

    def save(self, *, force: bool = False) -> None:
        """Writes the record when it changed, at most every `interval_seconds` unless forced."""
        if not self._dirty or (not force and time.monotonic() - self._saved_at < self.interval_seconds):
            return
        document = {"run_id": self.run_id, "last_step": self.last_step,
                    "metrics": {key: aggregate.to_dict() for key, aggregate in sorted(self.metrics.items())}}
        storage.write_text(self.url, json.dumps(document) + "\n")
        self._saved_at, self._dirty = time.monotonic(), False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
