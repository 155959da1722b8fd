"""One metrics sink: the same rows go to metrics.jsonl in the workdir, the console and any tracker.

Names are hierarchical (`loss/d`, `perf/images_per_sec`, `eval/fid`), so the
dashboard, the workdir and Ray Tune all see the same numbers under the same names.
Only Ray Train rank 0 owns a sink.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Protocol

from animegan import storage
from animegan.retries import call_with_retries


class MetricsWriter(Protocol):
    def write(self, step: int, row: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MediaWriter(MetricsWriter, Protocol):
    """A writer that also takes images, checkpoints and the run's summary (a tracker such as W&B).

    Writers without these methods (metrics.jsonl, the console) are simply not
    given them: the workdir has its own sample PNGs and checkpoints.
    """

    def log_image(self, step: int, key: str, image: Any, caption: str) -> None: ...
    def log_summary(self, values: dict[str, Any]) -> None: ...
    def log_checkpoint(self, step: int, url: str, final: bool) -> None: ...


class JsonlMetrics:
    """metrics.jsonl: one JSON object per logged step, continuing cleanly across resumes.

    On resume, rows after the resume step are dropped (they belong to work that
    the checkpoint does not hold), so no step is ever counted twice. Local files
    are appended to; object storage cannot append, so the whole file is
    rewritten at most every `remote_flush_seconds` and at every checkpoint.
    """

    def __init__(self, url: str, resume_step: int = 0, remote_flush_seconds: float = 30.0):
        self.url = url
        self.local = storage.is_local(url)
        self.remote_flush_seconds = remote_flush_seconds
        self.rows: list[dict[str, Any]] = []
        self.dirty = False
        self.last_flush = time.monotonic()
        text = call_with_retries(lambda: storage.read_text(url) if storage.exists(url) else "",
                                 what=f"reading {url}", url=url)
        if text:
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if row.get("step", 0) <= resume_step:
                    self.rows.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        text = "".join(json.dumps(row) + "\n" for row in self.rows)
        # Retried as reads are: a storage outage that a retry outlasts must not cost a restart.
        call_with_retries(lambda: storage.write_text(self.url, text), what=f"writing {self.url}", url=self.url)
        self.dirty = False
        self.last_flush = time.monotonic()

    def write(self, step: int, row: dict[str, Any]) -> None:
        row = {"step": step, **row}
        self.rows.append(row)
        if self.local:
            with open(storage.absolute(self.url), "a", encoding="utf-8") as file:
                file.write(json.dumps(row) + "\n")
            return
        self.dirty = True
        if time.monotonic() - self.last_flush >= self.remote_flush_seconds:
            self._rewrite()

    def flush(self) -> None:
        if self.dirty:
            self._rewrite()

    def close(self) -> None:
        self.flush()


class ConsoleProgress:
    """A progress line at most every `interval_seconds` (and always on the last step)."""

    def __init__(self, total_steps: int, interval_seconds: float = 5.0, stream=None):
        self.total_steps = total_steps
        self.interval_seconds = interval_seconds
        self.stream = stream or sys.stdout
        self.last_print = -math.inf
        self.started = time.monotonic()
        self.first_step: int | None = None

    def write(self, step: int, row: dict[str, Any]) -> None:
        if row and all(key.startswith("eval/") for key in row):
            return  # evaluation rows print their own line (animegan/metrics/during_training.py)
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = step
        if now - self.last_print < self.interval_seconds and step < self.total_steps:
            return
        self.last_print = now
        parts = [f"step {step}/{self.total_steps}"]
        for key, label in [("loss/d", "loss/d"), ("loss/g", "loss/g"), ("d/real", "D(x)"), ("d/fake", "D(G(z))")]:
            if key in row:
                parts.append(f"{label} {row[key]:.3f}")
        if "perf/images_per_sec" in row:
            parts.append(f"{row['perf/images_per_sec']:.0f} img/s")
        done = step - self.first_step
        if done > 0 and step < self.total_steps:
            remaining = (now - self.started) / done * (self.total_steps - step)
            parts.append(f"eta {_duration(remaining)}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class MetricsSink:
    """Fans each row out to every writer, in order."""

    def __init__(self, writers: list[MetricsWriter]):
        self.writers = list(writers)

    def add(self, writer: MetricsWriter) -> None:
        self.writers.append(writer)

    def log(self, step: int, row: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(step, row)

    def log_image(self, step: int, key: str, image: Any, caption: str = "") -> None:
        """A uint8 [H, W, 3] image under `key` at `step`, for the writers that take images."""
        for writer in self.writers:
            if hasattr(writer, "log_image"):
                writer.log_image(step, key, image, caption)

    def log_summary(self, values: dict[str, Any]) -> None:
        """The run's end state (status, final step), for the writers that keep a summary."""
        for writer in self.writers:
            if hasattr(writer, "log_summary"):
                writer.log_summary(values)

    def log_checkpoint(self, step: int, url: str, final: bool = False) -> None:
        """A checkpoint just stored at `url`, for the writers that keep checkpoints (W&B artifacts)."""
        for writer in self.writers:
            if hasattr(writer, "log_checkpoint"):
                writer.log_checkpoint(step, url, final)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
