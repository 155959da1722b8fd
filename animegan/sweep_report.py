"""The end of a sweep: Tune's results as a table, and what Tune does not do: the best generator and config.

Written into the sweep's workdir:

    trials.csv, trials.json   one row per trial: its values, status (finished, stopped early, diverged,
                              failed), steps and images seen, the objective's last and best value, the error
    best-config.json          the best trial's config, for `animegan train --config` (no workdir, so a
                              run made from it gets its own; the sweep's demo data and W&B group dropped)
    best-generator.keras      the best trial's exported EMA generator (when it ran to the end)
    best-generator/           the same generator as a TensorFlow SavedModel (animegan/export.py)
    winners.png               the latest sample grids of the best trials, best first, side by side
    best.json                 which trial won, with what value, and where the files above are

Every number comes from Tune's ResultGrid (each trial's reports, as Tune
recorded them): the best trial is `get_best_result(scope="last")`, the trial
whose last reported value of the objective is best (NaN and infinity never
win: a diverged trial reports its evaluation as NaN), and each trial's best
value is `get_dataframe(filter_metric=...)`'s. A trial's status is what its
last report says: "finished" or "diverged" from the run itself, a run still
"running" when the scheduler stopped it, or Tune's error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from animegan import storage
from animegan.config import TrainConfig
from animegan.failures import describe
from animegan.tuning import TRIALS_FOLDER, TUNE_FOLDER, SweepPlan, trial_name
from animegan.workdir import RunLayout

FINISHED, STOPPED, DIVERGED, FAILED = "finished", "stopped early", "diverged", "failed"
# Trials whose sample grids winners.png shows.
WINNERS = 4
# A sample grid read back from a trial's workdir is refused beyond this size (it is 530 x 530 as written).
MAX_GRID_SIDE = 4096


@dataclass
class TrialRow:
    trial: str
    status: str
    hyperparameters: dict[str, Any]
    steps: int  # the step of the last report
    images_seen: int
    final: float | None  # the objective's last reported value
    best: float | None
    best_step: int | None
    error: str
    workdir: str


@dataclass
class SweepOutcome:
    rows: list[TrialRow]
    best: TrialRow | None
    files: dict[str, str] = field(default_factory=dict)  # what was written, by name


def failure_message(error: BaseException) -> str:
    """One line for a failed trial: the original exception inside Ray's wrappers (RayTaskError.cause)."""
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    return describe(error)


def _value(value: Any) -> float | None:
    """A reported number as a float; None for a value that is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def status_of(last: dict[str, Any], error: BaseException | None) -> str:
    if error is not None:
        return FAILED
    if last.get("status") == "diverged":
        return DIVERGED
    if last.get("status") == "finished":
        return FINISHED
    return STOPPED  # the run was still going when the scheduler stopped it


def collect_rows(plan: SweepPlan, results) -> list[TrialRow]:
    """A row per trial of Tune's ResultGrid, each trial's best value from Tune's own filtered dataframe."""
    names = list(plan.search_space.dimensions)
    best_results = {}
    if any(result.metrics for result in results):
        frame = results.get_dataframe(filter_metric=plan.metric, filter_mode=plan.mode)
        if "trial_id" in frame:
            best_results = {trial_name(str(row["trial_id"])): row for row in frame.to_dict("records")}
    rows = []
    for result in results:
        trial = result.path.rstrip("/").rsplit("/", 1)[-1]  # Tune's folder is the trial's name
        last = result.metrics or {}
        best = best_results.get(trial, {})
        best_value = _value(best.get(plan.metric))
        rows.append(TrialRow(
            trial=trial, status=status_of(last, result.error),
            hyperparameters={name: result.config[name] for name in names if name in result.config},
            steps=int(last.get("step", 0)), images_seen=int(last.get("images_seen", 0)),
            final=_value(last.get(plan.metric)),
            best=best_value, best_step=int(best["step"]) if best_value is not None and "step" in best else None,
            error=failure_message(result.error) if result.error is not None else "",
            workdir=plan.trial_workdir(trial)))
    return sorted(rows, key=lambda row: row.trial)


def choose_best(plan: SweepPlan, results, rows: list[TrialRow]) -> TrialRow | None:
    """Tune's best trial by its last value of the objective; None when no trial reported a finite one."""
    try:
        best = results.get_best_result(metric=plan.metric, mode=plan.mode, scope="last")
    except RuntimeError:  # no trial reported the objective
        return None
    trial = best.path.rstrip("/").rsplit("/", 1)[-1]
    row = next(row for row in rows if row.trial == trial)
    # With a single trial Tune returns it whatever it reported.
    return row if row.final is not None and math.isfinite(row.final) else None


def ranked(plan: SweepPlan, rows: list[TrialRow]) -> list[TrialRow]:
    """Trials with a finite last value, best first (the order of get_best_result's choice)."""
    scored = [row for row in rows if row.final is not None and math.isfinite(row.final)]
    return sorted(scored, key=lambda row: row.final, reverse=plan.mode == "max")


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(plan: SweepPlan, rows: list[TrialRow]) -> str:
    names = list(plan.search_space.dimensions)
    header = ["trial", "status", *names, "steps", "images", f"final {plan.metric}", f"best {plan.metric}", "at step"]
    lines = [[row.trial, row.status, *(_number(row.hyperparameters.get(name)) for name in names), str(row.steps),
              str(row.images_seen), _number(row.final), _number(row.best), _number(row.best_step)] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *lines]]
    text += [f"{row.trial} failed: {row.error}" for row in rows if row.error]
    return "\n".join(text)


def write_table(plan: SweepPlan, rows: list[TrialRow], best: TrialRow | None) -> tuple[str, str]:
    names = list(plan.search_space.dimensions)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "status", *names, "steps", "images seen", f"final {plan.metric}", f"best {plan.metric}",
                     "best step", "error", "workdir"])
    for row in rows:
        writer.writerow([row.trial, row.status, *(row.hyperparameters.get(name, "") for name in names), row.steps,
                         row.images_seen, "" if row.final is None else row.final, "" if row.best is None else row.best,
                         "" if row.best_step is None else row.best_step, row.error, row.workdir])
    csv_url, json_url = storage.join(plan.workdir, "trials.csv"), storage.join(plan.workdir, "trials.json")
    storage.write_text(csv_url, buffer.getvalue())
    document = {"sweep": plan.name, "metric": plan.metric, "mode": plan.mode, "max_steps": plan.max_steps,
                "budget_images": plan.budget_images, "scheduler": plan.scheduler, "search": plan.search,
                "best_trial": best.trial if best else None, "trials": [asdict(row) for row in rows]}
    # NaN (a diverged trial's loss) is not JSON: written as null.
    storage.write_text(json_url, json.dumps(_without_nan(document), indent=2) + "\n")
    return csv_url, json_url


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return value


def write_best_config(plan: SweepPlan, best: TrialRow) -> str:
    """The best trial's config, ready for `animegan train --config FILE` (which resolves it afresh)."""
    values = json.loads(storage.read_text(RunLayout(best.workdir).config))
    # A run made from it gets its own workdir, the user's data (None: `train` draws its own demo
    # set) and the user's W&B group, not the sweep's.
    values.update(workdir="", data=plan.user_data, wandb_group=plan.user_group)
    TrainConfig.from_dict(values).validate()
    url = storage.join(plan.workdir, "best-config.json")
    storage.write_text(url, json.dumps(storage.redacted(values), indent=2) + "\n")
    return url


def export_best_generator(plan: SweepPlan, best: TrialRow, log: Callable[[str], None] = print) -> dict[str, str]:
    """Copies the best trial's generator.keras and exports a SavedModel of its newest generator."""
    from animegan.export import export_saved_model

    files = {}
    layout = RunLayout(best.workdir)
    if storage.exists(layout.generator):
        files["generator"] = storage.join(plan.workdir, "best-generator.keras")
        storage.write_bytes(files["generator"], storage.read_bytes(layout.generator))
    try:
        info = export_saved_model(best.workdir, storage.join(plan.workdir, "best-generator"))
        files["saved_model"] = info.out
    except (ValueError, OSError) as error:
        log(f"No SavedModel of the best generator: {error}")
    return files


def latest_samples(workdir: str):
    """The trial's newest sample grid (samples/step-*.png) as an RGB array, or None when it has none.

    The workdir may be shared: a file that is not a PNG of sane size is passed over.
    """
    import numpy as np
    from PIL import Image

    layout = RunLayout(workdir)
    names = sorted(name for name in storage.list_dir(layout.samples) if re.fullmatch(r"step-\d{8}\.png", name))
    if not names:
        return None
    try:
        with Image.open(io.BytesIO(storage.read_bytes(storage.join(layout.samples, names[-1])))) as image:
            if image.format != "PNG" or max(image.size) > MAX_GRID_SIDE:
                return None
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


def write_winners(plan: SweepPlan, winners: list[TrialRow], log: Callable[[str], None] = print) -> str | None:
    """winners.png: the newest sample grids of up to WINNERS trials, best first, left to right."""
    import numpy as np

    from animegan.grids import save_png

    grids = [grid for grid in (latest_samples(row.workdir) for row in winners[:WINNERS]) if grid is not None]
    if not grids:
        log("No sample grids in the best trials' workdirs: no winners.png")
        return None
    height = max(grid.shape[0] for grid in grids)
    gap = np.full((height, 16, 3), 255, np.uint8)
    parts = []
    for grid in grids:
        padded = np.full((height, grid.shape[1], 3), 255, np.uint8)
        padded[:grid.shape[0]] = grid
        parts += [padded, gap]
    url = storage.join(plan.workdir, "winners.png")
    save_png(url, np.concatenate(parts[:-1], axis=1))
    return url


def drop_pbt_copies(plan: SweepPlan, rows: list[TrialRow]) -> int:
    """Removes Tune's copies of the trials' checkpoints (tune/<trial>/checkpoint_*) once the sweep has ended.

    PBT needs them only to hand checkpoints between running trials; the trials' own checkpoints stay
    in trials/. Returns how many were removed.
    """
    removed = 0
    for row in rows:
        folder = storage.join(plan.workdir, TUNE_FOLDER, row.trial)
        for name in storage.list_dir(folder):
            if re.fullmatch(r"checkpoint_\d{6}", name):
                storage.remove_folder(storage.join(folder, name))
                removed += 1
    return removed


def finish_sweep(plan: SweepPlan, results, log: Callable[[str], None] = print) -> SweepOutcome:
    rows = collect_rows(plan, results)
    if plan.scheduler == "pbt":
        removed = drop_pbt_copies(plan, rows)
        log(f"Removed Tune's {removed} copies of the trials' checkpoints, which PBT handed between trials "
            f"(each trial's own checkpoints stay in {TRIALS_FOLDER}/<trial>/checkpoints)")
    best = choose_best(plan, results, rows)
    csv_url, json_url = write_table(plan, rows, best)
    outcome = SweepOutcome(rows, best, {"table": csv_url, "table_json": json_url})
    counts = {status: sum(row.status == status for row in rows) for status in (FINISHED, STOPPED, DIVERGED, FAILED)}
    log(f"\nSweep {plan.name}: {len(rows)} trials: " + ", ".join(f"{count} {status}" for status, count in
                                                                 counts.items() if count))
    log(format_table(plan, rows))
    if best is None:
        log(f"No trial reported {plan.metric}: no best config or generator.\n  table: {csv_url}")
        return outcome
    outcome.files["config"] = write_best_config(plan, best)
    outcome.files.update(export_best_generator(plan, best, log))
    winners = write_winners(plan, [best, *(row for row in ranked(plan, rows) if row is not best)], log)
    if winners is not None:
        outcome.files["winners"] = winners
    summary = {"trial": best.trial, "metric": plan.metric, "mode": plan.mode, "final": best.final,
               "steps": best.steps, "images_seen": best.images_seen, "hyperparameters": best.hyperparameters,
               "workdir": best.workdir,
               **outcome.files}
    outcome.files["best"] = storage.join(plan.workdir, "best.json")
    storage.write_text(outcome.files["best"], json.dumps(summary, indent=2) + "\n")
    log(f"Best: {best.trial}, final {plan.metric} {best.final:.4g} at step {best.steps}\n"
        f"  config:    {outcome.files['config']}  (animegan train --config FILE [--steps N] [--workdir DIR])\n"
        + "".join(f"  {label:<10} {outcome.files[name]}\n" for name, label in
                  (("generator", "generator:"), ("saved_model", "SavedModel:"), ("winners", "samples:"))
                  if name in outcome.files)
        + f"  table:     {csv_url}, {json_url}")
    return outcome
