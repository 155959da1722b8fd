"""The W&B writer: one W&B run fed from a queue by its own thread, so training never waits for W&B.

The training thread only enqueues rows, images, checkpoints and the end state; the
writer's thread starts the run (online, else offline), logs, builds artifacts
(animegan/wandb_artifacts.py) and finishes the run. Any W&B failure becomes a printed
warning: a tracker is never worth a failed run.

A session logs no step that the run already holds (W&B cannot overwrite a step), and
a resumed session's summary covers the whole run: both from the workdir's record of
what W&B holds (animegan/wandb_record.py).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from animegan import storage
from animegan import wandb_artifacts as artifacts
from animegan.wandb_record import SUMMARIES, LoggedRecord
from animegan.workdir import RunLayout

DEFAULT_BASE_URL = "https://api.wandb.ai"
STEP_METRIC = "step"  # every chart's x axis: the training step, so resumed runs line up
# The longest close() waits for W&B (start-up fallback included) before leaving it behind.
FINISH_TIMEOUT_SECONDS = 120.0
QUEUE_SIZE = 1000  # items waiting for W&B; beyond this, rows are dropped rather than block training


@dataclass(frozen=True)
class RunOptions:
    """Everything needed to start the W&B run, resolved from the config and the environment."""

    mode: str  # online, offline or disabled, after the API-key check
    offline_reason: str | None  # why the run is offline when nobody asked for it
    project: str
    entity: str | None
    group: str | None
    tags: tuple[str, ...]
    base_url: str | None
    directory: str  # local folder; W&B writes <directory>/wandb/<run folder>
    init_timeout: float
    console: str
    run_id: str
    name: str
    workdir: str
    log_model: bool
    checkpoint_every: int = 0  # --checkpoint-every, to number checkpoints
    wandb_checkpoint_every: int = 0  # every K-th checkpoint becomes an artifact; 0: none


class WandbWriter:
    """A MetricsSink writer for one W&B run; all W&B calls happen on its own thread.

    write(), log_image(), log_checkpoint(), use_pack() and log_summary() only
    enqueue. close() finishes the run, waiting at most `finish_timeout` seconds;
    whatever W&B has not sent by then stays in the run's local folder for `wandb sync`.
    """

    def __init__(self, options: RunOptions, run_config: dict[str, Any], *, log: Callable[[str], None] = print,
                 finish_timeout: float = FINISH_TIMEOUT_SECONDS):
        self.options = options
        self.log = log
        self.finish_timeout = finish_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._dropped = 0
        self._closed = False
        self._warned: set[str] = set()
        # On the W&B thread: what the run held before this session, and the end state for the summary.
        self._record: LoggedRecord | None = None
        self._logged_before: int | None = None  # steps up to this one are the run's already
        self._resumed_metrics: set[str] = set()  # metrics an earlier session logged
        self._repeated = 0
        self._end_state: dict[str, Any] = {}
        # Imported here, not on the W&B thread: importing wandb parses source with `ast` (pydantic
        # reads field docstrings), and CPython 3.11's ast is not thread-safe (gh-106905). Beside
        # TensorFlow's autograph parsing on the training thread, the import failed with "AST constructor
        # recursion depth mismatch" and the run had no W&B. It costs ~0.4 s once.
        import wandb  # noqa: F401

        self._thread = threading.Thread(target=self._work, args=(run_config,), name="animegan-wandb", daemon=True)
        self._thread.start()

    # --- the MetricsWriter side, on the training thread: enqueue only

    def write(self, step: int, row: dict[str, Any]) -> None:
        self._put("row", (step, dict(row)))

    def log_image(self, step: int, key: str, image: Any, caption: str = "") -> None:
        self._put("image", (step, key, np.array(image, dtype=np.uint8), caption))

    def log_summary(self, values: dict[str, Any]) -> None:
        self._put("summary", dict(values))

    def log_checkpoint(self, step: int, url: str, final: bool = False) -> None:
        """A checkpoint just stored at `url`; every --wandb-checkpoint-every-th becomes an artifact."""
        if artifacts.checkpoint_wanted(step, self.options.checkpoint_every, self.options.wandb_checkpoint_every,
                                       final):
            self._put("checkpoint", (url, False))

    def use_checkpoint(self, url: str) -> None:
        """The checkpoint this session resumed from: an input of the run (with --wandb-checkpoint-every)."""
        if self.options.wandb_checkpoint_every > 0:
            self._put("checkpoint", (url, True))

    def use_pack(self, source) -> None:
        """The data pack (a PackedSource) this run reads: an input of the run, by reference."""
        self._put("pack", source)

    def flush(self) -> None:
        pass  # W&B flushes on its own schedule; waiting for it here would stall the checkpoint

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(("finish", None), timeout=self.finish_timeout)
        except queue.Full:
            self.log(f"W&B: still busy after {self.finish_timeout:.0f} s; leaving the run unfinished")
            return
        self._thread.join(self.finish_timeout)
        if self._thread.is_alive():
            self.log(f"W&B: the run did not finish within {self.finish_timeout:.0f} s (server slow or unreachable); "
                     f"training is done and not affected. What W&B holds locally is in "
                     f"{os.path.join(self.options.directory, 'wandb')}; upload it with `wandb sync <run folder>`")
        if self._dropped:
            self.log(f"W&B: {self._dropped} item(s) were dropped because W&B fell behind; metrics.jsonl has all rows")

    def _put(self, kind: str, payload: Any) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((kind, payload))
        except queue.Full:
            self._dropped += 1
            self._warn_once("full", "W&B is falling behind; dropping items instead of slowing training")

    def _warn_once(self, topic: str, message: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            self.log(f"W&B: {message}")

    # --- the W&B thread

    def _work(self, run_config: dict[str, Any]) -> None:
        run = self._start(run_config)
        if run is not None:
            self._read_record()
        while True:
            kind, payload = self._queue.get()
            if kind == "finish":
                if run is not None:
                    self._finish(run)
                return
            if run is None:
                continue
            try:
                self._handle(run, kind, payload)
            except Exception as error:  # noqa: BLE001 (W&B must never stop training)
                self._warn_once(kind, f"could not log a {kind} ({type(error).__name__}: {error}); continuing")

    def _start(self, run_config: dict[str, Any]):
        """The W&B run: online if asked and reachable, else offline, else None (training goes on)."""
        import wandb

        options = self.options
        try:
            run = self._init(wandb, options.mode, run_config)
        except Exception as error:  # noqa: BLE001
            if options.mode != "online":
                self.log(f"W&B: could not start a run ({type(error).__name__}: {error}); training continues "
                         f"without W&B")
                return None
            self.log(f"W&B: the server {options.base_url or DEFAULT_BASE_URL} did not accept the run "
                     f"({type(error).__name__}: {str(error).splitlines()[0]}); logging offline instead")
            _teardown(wandb)  # a failed start leaves the run id taken in W&B's service
            try:
                run = self._init(wandb, "offline", run_config)
            except Exception as error:  # noqa: BLE001
                self.log(f"W&B: could not start an offline run either ({type(error).__name__}: {error}); "
                         f"training continues without W&B")
                return None
            self._say_how_to_sync(run, "the server could not be reached")
            return run
        if options.mode == "offline":
            self._say_how_to_sync(run, options.offline_reason)
        return run

    def _init(self, wandb, mode: str, run_config: dict[str, Any]):
        options = self.options
        settings = {"init_timeout": options.init_timeout, "console": options.console, "mode": mode}
        if options.base_url:
            settings["base_url"] = options.base_url
        os.makedirs(options.directory, exist_ok=True)
        run = wandb.init(
            project=options.project, entity=options.entity, group=options.group, tags=list(options.tags),
            name=options.name, id=options.run_id, resume="allow", job_type="train", dir=options.directory,
            config=run_config, reinit="create_new", settings=wandb.Settings(**settings),
        )
        # Charts use the training step as x axis, not W&B's own counter, so a resumed run's
        # rows continue its earlier sessions' on the same axis.
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        # The summary keeps each metric's best (and last) value, not only its last.
        for key, kind in SUMMARIES.items():
            run.define_metric(key, step_metric=STEP_METRIC, summary=f"{kind},last")
        return run

    def _read_record(self) -> None:
        """What W&B holds of this run from earlier sessions: where to log from, and the summaries so far."""
        try:
            self._record = LoggedRecord.load(RunLayout(self.options.workdir), self.options.run_id, log=self.log)
        except Exception as error:  # noqa: BLE001
            self.log(f"W&B: could not read what the run already holds ({type(error).__name__}: {error}); "
                     f"steps this session repeats may be logged twice")
            return
        self._logged_before = self._record.last_step
        self._resumed_metrics = set(self._record.metrics)
        if self._logged_before is not None:
            self.log(f"W&B: the run holds steps up to {self._logged_before}; this session logs the steps after it")

    def _say_how_to_sync(self, run, reason: str | None) -> None:
        folder = run.settings.sync_dir
        where = folder if storage.is_local(self.options.workdir) else (
            f"{folder} (copied to {storage.join(self.options.workdir, 'wandb')} at the end)")
        because = f" because {reason}" if reason else ""
        # Every session of a resumed workdir leaves a folder with the same run id; --id uploads them
        # in order of start time into one run.
        sessions = os.path.join(os.path.dirname(folder), f"offline-run-*-{self.options.run_id}")
        self.log(f"W&B: logging offline{because}, to {where}. To upload the run later (all its sessions): "
                 f"wandb sync --id {self.options.run_id} {sessions}")

    def _handle(self, run, kind: str, payload: Any) -> None:
        import wandb

        if kind in ("row", "image") and self._logged_before is not None and payload[0] <= self._logged_before:
            self._repeated += 1  # the run has this step already: W&B would add a second point
            return
        if kind == "row":
            step, row = payload
            run.log({STEP_METRIC: step, **row})
            self._note(step, row)
        elif kind == "image":
            step, key, image, caption = payload
            run.log({STEP_METRIC: step, key: wandb.Image(image, caption=caption)})
            self._note(step, {})
        elif kind == "summary":
            self._end_state.update(payload)
        elif kind == "pack":
            artifacts.publish(run, artifacts.pack_artifact(payload), ["latest"], as_input=True)
        elif kind == "checkpoint":
            url, resumed_from = payload
            artifact, aliases, temporary = artifacts.checkpoint_artifact(url, self.options.run_id)
            try:
                artifacts.publish(run, artifact, aliases, as_input=resumed_from)
            finally:
                if temporary:
                    shutil.rmtree(temporary, ignore_errors=True)

    def _note(self, step: int, row: dict[str, Any]) -> None:
        """Records a logged step (and its summarised metrics) in the workdir, for the next session."""
        if self._record is None:
            return
        self._record.observe(step, row)
        try:
            self._record.save()
        except Exception as error:  # noqa: BLE001
            self._warn_once("record", f"could not record the logged steps in {self._record.url} "
                                      f"({type(error).__name__}: {error}); a resume may log some steps twice")

    def summary(self) -> dict[str, Any]:
        """The end state and, after a resume, the whole run's summaries of the metrics earlier sessions logged.

        W&B aggregates define_metric's summaries per session (see animegan/wandb_record.py);
        a fresh run's are W&B's own and are left alone.
        """
        values: dict[str, Any] = {}
        if self._record is not None:
            for key in sorted(self._resumed_metrics & set(self._record.metrics)):
                values[key] = self._record.metrics[key].summary(SUMMARIES[key])
        values.update(self._end_state)
        return values

    def _finish(self, run) -> None:
        import wandb

        status = self._end_state.get("status", "finished")
        if self._repeated:
            self.log(f"W&B: {self._repeated} row(s) and image(s) of steps up to {self._logged_before}, which the "
                     f"run already held, were not logged again")
        for action, attempt in [("write the summary", lambda: run.summary.update(self.summary())),
                                ("record the logged steps", lambda: self._record and self._record.save(force=True)),
                                ("upload the generator", lambda: self._log_model(run)),
                                ("finish the run", lambda: run.finish(exit_code=0 if status == "finished" else 1))]:
            try:
                attempt()
            except Exception as error:  # noqa: BLE001
                self.log(f"W&B: could not {action} ({type(error).__name__}: {error})")
        folder = run.settings.sync_dir
        # Stops W&B's service, which writes the last records of the run's file.
        _teardown(wandb)
        if run.settings.mode == "offline" and not storage.is_local(self.options.workdir):
            self._copy_to_workdir(folder)

    def _log_model(self, run) -> None:
        if not self.options.log_model or self._end_state.get("status", "finished") != "finished":
            return
        layout = RunLayout(self.options.workdir)
        built = artifacts.generator_artifact(layout, self.options.run_id)
        if built is None:
            self.log(f"W&B: --wandb-log-model: no generator at {layout.generator}; nothing uploaded")
            return
        artifact, aliases, temporary = built
        try:
            run.log_artifact(artifact, aliases=aliases)
        finally:
            if temporary:
                shutil.rmtree(temporary, ignore_errors=True)

    def _copy_to_workdir(self, folder: str) -> None:
        """An offline run of a gs:// workdir would otherwise be stranded on rank 0's machine."""
        target = storage.join(self.options.workdir, "wandb", os.path.basename(folder))
        try:
            for root, _, names in os.walk(folder):
                for name in names:
                    local = os.path.join(root, name)
                    relative = os.path.relpath(local, folder).replace(os.sep, "/")
                    storage.upload_file(local, storage.join(target, relative))
        except Exception as error:  # noqa: BLE001
            self.log(f"W&B: could not copy the offline run to {target} ({type(error).__name__}: {error}); "
                     f"it is in {folder} on this machine")


def _teardown(wandb) -> None:
    try:
        wandb.teardown()
    except Exception:  # noqa: BLE001 (a service that is already gone is fine)
        pass
