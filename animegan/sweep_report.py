"""The end of a sweep: a table of its trials, the best trial's config, and the best generator.

Written into the sweep's workdir:

    trials.csv, trials.json   one row per trial: its sampled values, status (finished, stopped early,
                              diverged, failed), steps, final and best value of the objective, the error
    best-config.json          the best trial's config, for `animegan train --config` (no workdir, so a
                              run made from it gets its own; the sweep's demo data and W&B group dropped)
    best-generator.keras      the best trial's exported EMA generator (when it ran to the end)
    best-generator/           the same generator as a TensorFlow SavedModel (animegan/export.py)
    best.json                 which trial won, with what value, and where the files above are

The best trial is the one with the best *final* value among the trials that ran
to the end (among those stopped early when none did): its final generator is
the one exported, and a final value is what `animegan train --config` reproduces.
Values come from each trial's metrics.jsonl, the record the trial itself keeps.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from animegan import storage
from animegan.config import TrainConfig
from animegan.failures import describe
from animegan.tuning import SweepPlan
from animegan.workdir import RunLayout

FINISHED, STOPPED, DIVERGED, FAILED = "finished", "stopped early", "diverged", "failed"


@dataclass
class TrialRow:
    trial: str
    status: str
    hyperparameters: dict[str, Any]
    steps: int  # the last step metrics.jsonl recorded
    final: float | None  # the objective's last value
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


def objective_history(metrics_url: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl row that has the objective, in file order."""
    if not storage.exists(metrics_url):
        return []
    history = []
    for line in storage.read_text(metrics_url).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short when the trial was stopped
        value = row.get(metric)
        if isinstance(value, (int, float)):
            history.append((int(row["step"]), float(value)))
    return history


def _last_step(metrics_url: str) -> int:
    steps = [0]
    if storage.exists(metrics_url):
        for line in storage.read_text(metrics_url).splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return max(steps)


def trial_row(plan: SweepPlan, trial: str, sampled: dict[str, Any], error: BaseException | None) -> TrialRow:
    layout = RunLayout(plan.trial_workdir(trial))
    history = objective_history(layout.metrics, plan.metric)
    finite = [(step, value) for step, value in history if math.isfinite(value)]
    pick = min if plan.mode == "min" else max
    best_step, best = pick(finite, key=lambda entry: entry[1]) if finite else (None, None)
    ended = json.loads(storage.read_text(layout.status)) if storage.exists(layout.status) else {}
    steps = max(_last_step(layout.metrics), int(ended.get("step", 0)))
    if error is not None:
        status = FAILED
    elif ended.get("status") == "diverged":
        status = DIVERGED
    elif ended.get("status") == "finished" and steps >= plan.max_steps:
        status = FINISHED
    else:
        status = STOPPED
    return TrialRow(trial=trial, status=status, hyperparameters=sampled, steps=steps,
                    final=history[-1][1] if history else None, best=best, best_step=best_step,
                    error=failure_message(error) if error is not None else "", workdir=layout.workdir)


def collect_rows(plan: SweepPlan, results) -> list[TrialRow]:
    """A row per trial of Tune's ResultGrid (folder names are the trial names, see tuning._trial_folder)."""
    names = list(plan.search_space.dimensions)
    rows = []
    for result in results:
        trial = result.path.rstrip("/").rsplit("/", 1)[-1]
        sampled = {name: result.config[name] for name in names if name in result.config}
        rows.append(trial_row(plan, trial, sampled, result.error))
    return sorted(rows, key=lambda row: row.trial)


def choose_best(rows: Iterable[TrialRow], mode: str) -> TrialRow | None:
    """The best final value among finished trials; among those stopped early when none finished."""
    scored = [row for row in rows if row.final is not None and math.isfinite(row.final)]
    candidates = [row for row in scored if row.status == FINISHED] or [row for row in scored
                                                                       if row.status == STOPPED]
    if not candidates:
        return None
    pick = min if mode == "min" else max
    return pick(candidates, key=lambda row: row.final)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(plan: SweepPlan, rows: list[TrialRow]) -> str:
    names = list(plan.search_space.dimensions)
    header = ["trial", "status", *names, "steps", f"final {plan.metric}", f"best {plan.metric}", "at step"]
    lines = [[row.trial, row.status, *(_number(row.hyperparameters.get(name)) for name in names), str(row.steps),
              _number(row.final), _number(row.best), _number(row.best_step)] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *lines]]
    text += [f"{row.trial} failed: {row.error}" for row in rows if row.error]
    return "\n".join(text)


def write_table(plan: SweepPlan, rows: list[TrialRow], best: TrialRow | None) -> tuple[str, str]:
    names = list(plan.search_space.dimensions)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "status", *names, "steps", f"final {plan.metric}", f"best {plan.metric}",
                     "best step", "error", "workdir"])
    for row in rows:
        writer.writerow([row.trial, row.status, *(row.hyperparameters.get(name, "") for name in names), row.steps,
                         "" if row.final is None else row.final, "" if row.best is None else row.best,
                         "" if row.best_step is None else row.best_step, row.error, row.workdir])
    csv_url, json_url = storage.join(plan.workdir, "trials.csv"), storage.join(plan.workdir, "trials.json")
    storage.write_text(csv_url, buffer.getvalue())
    document = {"sweep": plan.name, "metric": plan.metric, "mode": plan.mode, "max_steps": plan.max_steps,
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


def finish_sweep(plan: SweepPlan, results, log: Callable[[str], None] = print) -> SweepOutcome:
    rows = collect_rows(plan, results)
    best = choose_best(rows, plan.mode)
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
    summary = {"trial": best.trial, "metric": plan.metric, "mode": plan.mode, "final": best.final,
               "steps": best.steps, "hyperparameters": best.hyperparameters, "workdir": best.workdir,
               **outcome.files}
    outcome.files["best"] = storage.join(plan.workdir, "best.json")
    storage.write_text(outcome.files["best"], json.dumps(summary, indent=2) + "\n")
    log(f"Best: {best.trial}, final {plan.metric} {best.final:.4g} at step {best.steps}\n"
        f"  config:    {outcome.files['config']}  (animegan train --config FILE [--steps N] [--workdir DIR])\n"
        + "".join(f"  {label:<10} {outcome.files[name]}\n" for name, label in
                  (("generator", "generator:"), ("saved_model", "SavedModel:")) if name in outcome.files)
        + f"  table:     {csv_url}, {json_url}")
    return outcome
