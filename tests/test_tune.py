"""Hyperparameter sweeps (`animegan tune`): the search space and the sweep's checks without Ray, then real
sweeps of tiny models on local Ray instances: one on the test session's instance (2 CPUs, half a CPU per
worker) reading the emulator bucket, with eval/fid as the objective and a trial that fails, and one on the
demo set whose driver is killed and started again in its own process with its own Ray instance.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animegan import gan
from animegan.cli import main as cli_main
from animegan.config import TrainConfig
from animegan.search_space import build_space, default_dimensions
from animegan.sweep_report import status_of
from animegan.tuning import (OBJECTIVES, SweepSettings, execute_sweep, plan_sweep, population_note, trial_name,
                             trials_at_once)
from tests.support.bucket_data import image_bytes, upload
from tests.support.images import write_folder
from tests.support.processes import group_alive, is_running, kill_tree
from tests.support.wandb_records import read_run, run_files

REPO = Path(__file__).resolve().parent.parent
TINY = dict(noise_dim=16, generator_width=8, discriminator_width=8)
TINY_FLAGS = ["--noise-dim", "16", "--generator-width", "8", "--discriminator-width", "8"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("faces")
    write_folder(folder, 48)
    return str(folder)


def space_file(tmp_path: Path, text: str, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_line_error(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1, error
    return error


# ------------------------------------------------------------------ the search space, without Ray

def test_the_default_space_searches_rate_batch_and_noise_and_leaves_out_what_the_user_fixed():
    space = build_space(TrainConfig(), set())
    assert {name: (dimension.kind, dimension.values) for name, dimension in space.dimensions.items()} == {
        "lr": ("loguniform", (1e-5, 1e-3)), "batch_size": ("choice", (32, 64, 128, 256)),
        "noise_dim": ("choice", (64, 100, 128, 300))}
    separate = build_space(TrainConfig(), {"batch_size"}, separate_lr=True)
    assert list(separate.dimensions) == ["generator_lr", "discriminator_lr", "noise_dim"]
    assert build_space(TrainConfig(batch_size=8, noise_dim=16), {"batch_size", "noise_dim", "lr"}).dimensions == {}


def test_a_search_space_file_adds_changes_removes_and_fixes_fields(tmp_path):
    # YAML reads 1e-5 as a string: numeric strings are numbers here.
    path = space_file(tmp_path, "lr: {loguniform: [1e-5, 1e-2]}\nbeta1: {uniform: [0.3, 0.9]}\n"
                                "generator_width: {randint: [8, 17]}\nflip: {choice: [true, false]}\n"
                                "noise_dim: {grid: [16, 32]}\nbatch_size: null\nlabel_smoothing: 0.1\n")
    space = build_space(TrainConfig(), set(), file=path)
    assert {name: (dimension.kind, dimension.values) for name, dimension in space.dimensions.items()} == {
        "lr": ("loguniform", (1e-5, 1e-2)), "beta1": ("uniform", (0.3, 0.9)), "generator_width": ("randint", (8, 17)),
        "flip": ("choice", (True, False)), "noise_dim": ("grid", (16, 32))}
    assert space.constants == {"label_smoothing": 0.1} and space.grid_size == 2
    json_path = space_file(tmp_path, json.dumps({"batch_size": {"choice": [16, 32]}}), "space.json")
    assert build_space(TrainConfig(), set(), file=json_path).dimensions["batch_size"].values == (16, 32)


@pytest.mark.parametrize("text, message", [
    ("btach_size: {choice: [8]}", "unknown config field(s): 'btach_size' (did you mean 'batch_size'?)"),
    ("workers: {choice: [1, 2]}", "workers cannot be searched: every trial has the same resources: set "
                                  "--workers-per-trial"),
    ("steps: {choice: [10]}", "steps cannot be searched: every trial runs --max-steps steps"),
    ("lr: {lognormal: [0.1, 1]}", "lr: unknown kind 'lognormal'; use one of loguniform, uniform, choice, randint"),
    ("lr: {uniform: [0.1, 1], choice: [0.1]}", "lr must have exactly one of loguniform"),
    ("lr: {loguniform: [0, 0.1]}", "lr: loguniform needs 0 < low, got [0, 0.1]"),
    ("lr: {uniform: [0.1, 0.01]}", "lr: uniform needs low < high, got [0.1, 0.01]"),
    ("lr: {uniform: [0.1]}", "lr: uniform takes [low, high], two numbers"),
    ("lr: {randint: [1, 3]}", "lr is not an integer field: randint is for integer fields"),
    ("generator_width: {uniform: [16, 64]}", "generator_width is not a float field: use choice, grid or "
                                                "randint, not uniform"),
    ("flip: {loguniform: [1, 2]}", "flip is not a float field: use choice or grid, not loguniform"),
    ("generator_width: {choice: []}", "generator_width: choice takes a list, got []"),
    ("generator_width: {choice: [16, 16.5]}", "config field 'generator_width' expects int, got 16.5"),
    ("generator_width: [16, 32]", "generator_width: expected one value or a mapping like {choice: [...]}"),
    ("batch_size: {choice: [32, 33]}", "search space: batch_size = 33 (choice [32, 33]) cannot be used: "
                                       "--batch-size 33 cannot be split evenly over 2 replicas"),
    ("beta1: {uniform: [0.5, 1.5]}", "search space: beta1 = 1.5 (uniform [0.5, 1.5]) cannot be used: --beta1 "
                                     "must be in [0, 1)"),
    ("label_smoothing: 0.7", "search space constants: --label-smoothing must be in [0, 0.5)"),
    ("noise_dim: {choice: [16]}", "noise_dim is fixed by --noise-dim (or --config) and also set in the search"),
    ("- lr", "must hold a mapping of field names to values"),
])
def test_bad_search_spaces_are_refused_before_anything_runs(tmp_path, text, message):
    path = space_file(tmp_path, text)
    with pytest.raises(ValueError) as refused:
        build_space(TrainConfig(workers=2, noise_dim=16), {"noise_dim"}, file=path)
    assert message in str(refused.value) and str(refused.value).startswith("search space")


def test_trials_run_as_many_at_once_as_the_cluster_hosts_whole(capsys):
    config = TrainConfig(cpus_per_worker=0.5)
    assert trials_at_once({"CPU": 2.0}, config, requested=None, trials=8) == 4
    assert trials_at_once({"CPU": 2.0}, config, requested=None, trials=3) == 3
    assert trials_at_once({"CPU": 2.0}, config.replace(workers=2, batch_size=8), requested=None, trials=8) == 2
    assert trials_at_once({"CPU": 2.0}, TrainConfig(workers=2, cpus_per_worker=1), requested=None, trials=8) == 1
    assert trials_at_once({"CPU": 2.0}, TrainConfig(cpus_per_worker=0.3), requested=2, trials=8) == 2
    gpus = TrainConfig(cpus_per_worker=4, gpus_per_worker=1)
    assert trials_at_once({"CPU": 64.0, "GPU": 3.0}, gpus, requested=None, trials=8) == 3
    logged = []
    assert trials_at_once({"CPU": 2.0}, TrainConfig(cpus_per_worker=1), requested=5, trials=8, log=logged.append) == 2
    assert logged == ["--concurrent 5: the cluster hosts 2 trials at once; running 2"]
    with pytest.raises(ValueError, match=r"one trial needs 2 workers x 1.5 CPUs \(and 0 GPUs each\), but the Ray "
                                         r"cluster has 2 CPUs and 0 GPUs"):
        trials_at_once({"CPU": 2.0}, TrainConfig(workers=2, cpus_per_worker=1.5), requested=None, trials=2)
    assert trials_at_once({"CPU": 2.0}, gpus, requested=4, trials=8, autoscaling=True) == 4


def test_trial_names_follow_tunes_trial_counter():
    assert trial_name("3f2a1_00003") == "trial-0003"
    assert trial_name("3f2a1_12345") == "trial-12345"
    assert trial_name("odd") == "trial-odd"


def test_every_objective_is_something_trials_report():
    assert set(gan.STEP_METRICS) < set(OBJECTIVES) and {"eval/fid", "eval/kid"} < set(OBJECTIVES)


def test_a_trials_status_is_what_its_last_report_says():
    assert status_of({"status": "finished", "step": 8}, None) == "finished"
    assert status_of({"status": "diverged"}, None) == "diverged"
    assert status_of({"status": "running"}, None) == "stopped early"  # the scheduler stopped a running trial
    assert status_of({}, ValueError("36 images cannot fill one batch")) == "failed"


# ------------------------------------------------------------------ images as the budget, PBT, Optuna, without Ray

def quiet_plan(tmp_path, faces, settings: SweepSettings, fixed=(), **config) -> "SweepPlan":
    base = TrainConfig(workdir=str(tmp_path / "sweep"), data=faces, **{**TINY, **config})
    return plan_sweep(base, settings, {"workdir", "data", *TINY, *config, *fixed}, write=False, log=lambda *_: None)


def test_every_trial_sees_the_same_images_whatever_batch_size_it_samples(tmp_path, faces):
    space = space_file(tmp_path, "batch_size: {choice: [8, 32]}\n")
    plan = quiet_plan(tmp_path, faces, SweepSettings(trials=2, max_images=640, report_every_images=96,
                                                     metric="loss/g", search_space=space))
    assert (plan.budget_images, plan.report_every_images, plan.grace_images) == (640, 96, 160)
    small, large = plan.trial_config({"batch_size": 8}, "trial-0000"), plan.trial_config({"batch_size": 32}, "t")
    # 640 images: 80 steps of 8 or 20 of 32; a report every 96 images (rounded up to whole batches).
    assert (small.steps, plan.report_steps(8), small.checkpoint_every) == (80, 12, 20)
    assert (large.steps, plan.report_steps(32), large.checkpoint_every) == (20, 3, 5)
    # --max-steps counts steps of the base batch size (the config's 64 by default).
    steps_plan = quiet_plan(tmp_path, faces, SweepSettings(trials=2, max_steps=10, metric="loss/g", search_space=space))
    assert (steps_plan.budget_images, steps_plan.report_every_images) == (640, 64)
    assert steps_plan.trial_config({"batch_size": 8}, "t").steps == 80


def test_the_schedulers_keep_time_in_images_seen(tmp_path, faces):
    from animegan.sweep_schedulers import make_scheduler

    asha = make_scheduler(quiet_plan(tmp_path, faces, SweepSettings(trials=2, max_images=640, grace_images=64,
                                                                    metric="loss/g")))
    # A trial at the horizon is left to end by itself (exporting its generator), not stopped at its last report.
    assert (asha._time_attr, asha._max_t, asha._stop_last_trials) == ("images_seen", 640, False)
    plan = quiet_plan(tmp_path, faces, SweepSettings(trials=4, max_images=640, report_every_images=64,
                                                     scheduler="pbt", metric="loss/g"))
    pbt = make_scheduler(plan)
    assert (pbt._time_attr, pbt._perturbation_interval) == ("images_seen", 64)  # at every report
    # PBT compares only trials that run together: a cluster too small for the population is said before it starts.
    assert population_note(plan, 4) is None
    assert population_note(plan, 2).startswith("PBT: the cluster hosts 2 of the 4 trials at once; PBT compares")


def test_pbt_perturbs_the_two_learning_rates_and_carries_shapes_and_batch_size_with_the_checkpoints(
        tmp_path, faces):
    from animegan.sweep_schedulers import clip_to_space, perturbed_dimensions

    settings = SweepSettings(trials=4, max_images=640, report_every_images=64, scheduler="pbt", metric="loss/g")
    default_space = plan_sweep(TrainConfig(workdir=str(tmp_path / "sweep"), data=faces), settings,
                               {"workdir", "data"}, write=False, log=lambda *_: None).search_space.dimensions
    # PBT searches the two networks' rates apart and perturbs only them: the batch size and the noise
    # dimension are sampled once per trial and change only with the checkpoint of a trial trained with them.
    assert list(default_space) == ["generator_lr", "discriminator_lr", "batch_size", "noise_dim"]
    assert list(perturbed_dimensions(default_space)) == ["generator_lr", "discriminator_lr"]
    plan = quiet_plan(tmp_path, faces, settings, batch_size=8)
    # Every report is a checkpoint: PBT copies them between trials there.
    config = plan.trial_config({"generator_lr": 1e-4, "discriminator_lr": 2e-4}, "trial-0000")
    assert (config.steps, config.checkpoint_every, plan.report_steps(8)) == (80, 8, 8)
    # A perturbation (x1.2, x0.8) never leaves the space: beta1 = 0.85 x 1.2 stays a valid Adam beta.
    beta = space_file(tmp_path, "beta1: {uniform: [0.3, 0.9]}\nr1_every: {randint: [4, 17]}\n", "beta.yaml")
    dimensions = quiet_plan(tmp_path, faces, SweepSettings(trials=4, scheduler="pbt", metric="loss/g",
                                                           search_space=beta)).search_space.dimensions
    assert clip_to_space({"beta1": 0.85 * 1.2, "r1_every": 20, "generator_lr": 5.0}, dimensions) == {
        "beta1": 0.9, "r1_every": 16, "generator_lr": 1e-3}


@pytest.mark.parametrize("argv, message", [
    (["--scheduler", "pbt", "--search", "optuna"], "--search optuna cannot be used with --scheduler pbt: PBT "
                                                   "chooses its trials' values itself"),
    (["--scheduler", "pbt", "--generator-lr", "1e-4", "--discriminator-lr", "1e-4", "--batch-size", "8",
      "--noise-dim", "16"], "--scheduler pbt has nothing to perturb: the search space holds nothing"),
    (["--scheduler", "pbt", "--checkpoint-every", "5"], "--scheduler pbt checkpoints at every report"),
    (["--scheduler", "pbt", "--grace-images", "64"], "--grace-steps and --grace-images are ASHA's; --scheduler pbt "
                                                     "has none"),
    (["--perturb-every-images", "64"], "--perturb-every-images is PBT's; --scheduler asha does not perturb"),
    (["--max-steps", "10", "--max-images", "640"], "give --max-steps or --max-images, not both"),
    (["--max-images", "64", "--report-every-images", "128"], "--report-every-images 128 is more than the 64 "
                                                             "images a trial sees"),
    (["--search", "optuna", "--search-space", "GRID"], "--search optuna cannot search a grid (noise_dim): Optuna "
                                                        "samples every trial's values itself; use choice instead"),
])
def test_bad_scheduler_and_searcher_settings_end_the_command_with_one_line(capsys, tmp_path, argv, message):
    grid = space_file(tmp_path, "noise_dim: {grid: [16, 32]}\n")
    argv = [grid if value == "GRID" else value for value in argv]
    error = one_line_error(capsys, ["tune", "--dry-run", "--workdir", str(tmp_path), "--trials", "2",
                                    "--metric", "loss/g", *argv])
    assert message in error


def test_optuna_is_optional_and_its_absence_names_the_extra_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets when it is not installed
    error = one_line_error(capsys, ["tune", "--dry-run", "--workdir", str(tmp_path), "--trials", "2",
                                    "--metric", "loss/g", "--search", "optuna"])
    assert "--search optuna needs Optuna, which is not installed: pip install 'animegan[tune]'" in error
    # Random search, the default, needs nothing more.
    assert cli_main(["tune", "--dry-run", "--workdir", str(tmp_path), "--trials", "2", "--metric", "loss/g"]) == 0


def searched_rates(plan, seed: int, count: int) -> list[float]:
    """The learning rates the sweep's searcher proposes, each trial 'finishing' at once with the objective
    |log10(lr) + 3| (best at 1e-3), as Tune would tell it."""
    from ray.tune.experiment import Experiment

    from animegan.sweep_schedulers import make_searcher

    searcher = make_searcher(plan, at_once=1, seed=seed)
    if plan.search == "random":
        searcher.add_configurations([Experiment("sweep", run=lambda config: None,
                                                config=plan.search_space.to_tune(), num_samples=count)])
    else:
        searcher.set_search_properties(plan.metric, plan.mode, plan.search_space.to_tune())
    rates = []
    for number in range(count):
        if plan.search == "random":
            trial = searcher.next_trial()
            trial_id, rate = trial.trial_id, trial.config["lr"]
        else:
            trial_id = f"trial-{number}"
            rate = searcher.suggest(trial_id)["lr"]
        searcher.on_trial_complete(trial_id, {plan.metric: abs(math.log10(rate) + 3)})
        rates.append(rate)
    return rates


def test_optuna_proposes_other_values_than_random_search_for_the_same_seed_and_learns_from_results(
        tmp_path, faces):
    space = space_file(tmp_path, "lr: {loguniform: [1.0e-6, 1.0]}\n")

    def plan(search):
        return quiet_plan(tmp_path, faces, SweepSettings(trials=24, metric="loss/g", search=search,
                                                         search_space=space), batch_size=8)

    optuna_rates, random_rates = searched_rates(plan("optuna"), 0, 24), searched_rates(plan("random"), 0, 24)
    assert searched_rates(plan("optuna"), 0, 24) == optuna_rates  # seeded: a sweep started again proposes the same
    assert searched_rates(plan("random"), 0, 24) == random_rates
    assert not set(optuna_rates) & set(random_rates)
    # After its random start (6 trials for a sweep of 24), TPE proposes rates nearer the best one than random does.
    def median_distance(rates):
        return sorted(abs(math.log10(rate) + 3) for rate in rates[12:])[6]

    assert median_distance(optuna_rates) < median_distance(random_rates), (optuna_rates, random_rates)


# ------------------------------------------------------------------ the command, without Ray

def dry_run(capsys, argv: list[str]) -> dict:
    assert cli_main(["tune", "--dry-run", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_flags_set_the_base_config_and_fix_what_they_set(capsys, tmp_path, faces):
    plan = dry_run(capsys, ["--trials", "4", "--workdir", str(tmp_path / "sweep"), "--data", faces, *TINY_FLAGS,
                            "--max-steps", "40", "--workers-per-trial", "2", "--cpus-per-worker", "0.5",
                            "--inception-weights", "random"])
    base = plan["base"]
    assert (base["steps"], base["workers"], base["cpus_per_worker"], base["noise_dim"]) == (40, 2, 0.5, 16)
    assert (base["data"], base["wandb_group"], plan["name"]) == (faces, "sweep", "sweep")
    # 40 steps of 64 images; four checkpoints per trial unless --checkpoint-every says otherwise; ten reports,
    # each with an evaluation (eval/fid turns it on); ASHA's grace period a quarter of the images.
    assert (plan["budget_images"], plan["report_every_images"], plan["grace_images"]) == (2560, 256, 640)
    assert (base["checkpoint_every"], base["eval_every"], plan["derived"]) == (10, 4, ["checkpoint_every",
                                                                                    "eval_every"])
    assert list(plan["space"]["dimensions"]) == ["lr", "batch_size"]
    assert (plan["metric"], plan["mode"], plan["scheduler"], plan["trial_count"]) == ("eval/fid", "min", "asha", 4)
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing

    config_file = tmp_path / "base.yaml"
    config_file.write_text("batch_size: 16\ncheckpoint_every: 7\nsteps: 21\n")
    plan = dry_run(capsys, ["--trials", "2", "--config", str(config_file), "--metric", "loss/d", "--separate-lr",
                            "--workdir", str(tmp_path / "other"), "--wandb-group", "mine"])
    assert (plan["base"]["steps"], plan["base"]["checkpoint_every"], plan["base"]["eval_every"]) == (21, 7, 0)
    assert list(plan["space"]["dimensions"]) == ["generator_lr", "discriminator_lr", "noise_dim"]
    assert (plan["name"], plan["user_group"], plan["user_data"]) == ("mine", "mine", None)


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--trials", "2", "--metric", "loss/x"], "--metric 'loss/x' is not something trials report; use one of "
                                             "eval/fid"),
    (["--trials", "2", "--max-steps", "0"], "--max-steps must be a positive integer, got 0"),
    (["--trials", "2", "--max-steps", "8", "--grace-steps", "9"], "--grace-steps 9 (576 images) is more than the "
                                                                  "512 images a trial sees"),
    (["--trials", "2", "--eval-every", "0"], "--metric eval/fid needs evaluation during training; --eval-every 0 "
                                             "turns it off"),
    (["--trials", "2", "--workers-per-trial", "2", "--batch-size", "7"], "--batch-size 7 cannot be split evenly "
                                                                         "over 2 replicas"),
    (["--trials", "2", "--search-space", "missing.yaml"], "search space file not found: missing.yaml"),
    (["--trials", "2", "--inception-weights", "/nowhere/fid-inception"], "the FID Inception weights are not in "
                                                                         "/nowhere/fid-inception; run `animegan "
                                                                         "fid-weights` once"),
])
def test_bad_sweep_settings_end_the_command_with_one_line(capsys, tmp_path, argv, message):
    error = one_line_error(capsys, ["tune", "--dry-run", "--workdir", str(tmp_path), *argv])
    assert message in error


def test_epochs_and_a_changed_sweep_are_refused(capsys, tmp_path, faces):
    config_file = tmp_path / "base.yaml"
    config_file.write_text("epochs: 2\n")
    error = one_line_error(capsys, ["tune", "--dry-run", "--trials", "2", "--config", str(config_file)])
    assert "a sweep's trials all see the same number of images" in error

    base = TrainConfig(workdir=str(tmp_path / "sweep"), data=faces, **TINY)
    settings = SweepSettings(trials=2, max_steps=20, metric="loss/d")
    fixed = {"workdir", "data", *TINY}
    plan = plan_sweep(base, settings, fixed, log=lambda *_: None)
    assert plan_sweep(base, settings, fixed, log=lambda *_: None) == plan  # the same command: resumable
    with pytest.raises(ValueError, match=r"sweep holds another sweep \(samples: 2 -> 3\); run the command "
                                         r"that started it to resume it, or choose a new --workdir"):
        plan_sweep(base, SweepSettings(trials=3, max_steps=20, metric="loss/d"), fixed, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"holds another sweep \(checkpoint_every: 5 -> 8; steps: 20 -> 30; "
                                         r"budget_images: 1280 -> 1920; grace_images: 320 -> 480; "):
        plan_sweep(base, SweepSettings(trials=2, max_steps=30, metric="loss/d"), fixed, log=lambda *_: None)


def test_the_smoke_test_job_is_a_tiny_sweep_that_needs_no_evaluation_weights(capsys, tmp_path):
    import runpy

    from animegan.job_entry import run_job

    smoke_test = runpy.run_path(str(REPO / "jobs" / "tune.py"))["SMOKE_TEST"]
    assert run_job("tune", ["--smoke-test", "--dry-run", "--workdir", str(tmp_path)], smoke_test=smoke_test,
                   smoke_test_help="") == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["trial_count"], plan["base"]["steps"], plan["base"]["noise_dim"], plan["base"]["eval_every"]) == (
        3, 10, 16, 0)
    assert list(plan["space"]["dimensions"]) == ["lr"]


# ------------------------------------------------------------------ sweeps on Ray

def metric_rows(workdir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def tune_results(sweep: Path, trial: str) -> list[dict]:
    """Every result Tune recorded for the trial, in order."""
    return [json.loads(line) for line in (sweep / "tune" / trial / "result.json").read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_sweep_on_fid_reports_every_trial_survives_a_failed_one_and_exports_the_best(
        ray_cluster, bucket, tmp_path, capsys):
    data = f"{bucket}/faces"
    upload(data, image_bytes(48))
    sweep = tmp_path / "sweep"
    # 12 of the 48 images are held out for FID: a batch of 64 cannot be filled from the other 36,
    # which only the trial finds out (the search space's checks do not read the data).
    space = space_file(tmp_path, "batch_size: {grid: [8, 16, 64]}\n")
    base = TrainConfig(workdir=str(sweep), data=data, cpus_per_worker=0.5, checkpoint_every=4, log_every=2,
                       sample_every=100, eval_samples=8, holdout_fraction=0.25, inception_weights="random", **TINY)
    fixed = {"workdir", "data", "cpus_per_worker", "checkpoint_every", "log_every", "sample_every",
             "eval_samples", "holdout_fraction", "inception_weights", *TINY}
    # 64 images each: 8 steps of 8, 4 of 16; a report with an evaluation every 32 images (4 or 2 steps).
    plan = plan_sweep(base, SweepSettings(trials=1, max_images=64, report_every_images=32, search_space=space,
                                          grace_images=32), fixed)
    # Added after the sweep listed its data: no trial may see it, since none lists the data again.
    upload(data, {"zz-late.png": image_bytes(49)["00048.png"]})
    outcome = execute_sweep(plan)
    printed = capsys.readouterr().out

    rows = {row.hyperparameters["batch_size"]: row for row in outcome.rows}
    assert sorted(rows) == [8, 16, 64] and [row.trial for row in outcome.rows] == ["trial-0000", "trial-0001",
                                                                                   "trial-0002"]
    failed = rows[64]
    assert failed.status == "failed" and failed.final is None
    assert failed.error.startswith("ValueError: 36 images at ") and "cannot fill one batch of 64" in failed.error
    assert f"{failed.trial} failed: ValueError: 36 images at" in printed
    # Found when the trial resolved its run, before Ray Train started workers for it.
    assert failed.steps == 0 and not (Path(failed.workdir) / "checkpoints").exists()
    listing = json.loads((sweep / "data-index.json").read_text())["items"]
    assert len(listing) == 48 and "zz-late.png" not in " ".join(listing)

    lrs = set()
    for batch in (8, 16):
        row = rows[batch]
        assert row.status in ("finished", "stopped early"), row
        config = json.loads((Path(row.workdir) / "config.json").read_text())
        assert Path(row.workdir) == sweep / "trials" / row.trial
        assert (config["batch_size"], config["lr"], config["steps"], config["eval_every"]) == (
            batch, row.hyperparameters["lr"], 64 // batch, 32 // batch)
        assert 1e-5 <= config["lr"] <= 1e-3 and (config["noise_dim"], config["cpus_per_worker"]) == (16, 0.5)
        assert config["data"] == data
        lrs.add(config["lr"])
        index = json.loads((Path(row.workdir) / "data-index.json").read_text())
        assert sorted(index["items"] + index["holdout"]) == sorted(listing) and len(index["holdout"]) == 12
        fids = [(item["step"], item["eval/fid"]) for item in metric_rows(row.workdir) if "eval/fid" in item]
        assert fids and row.final == fids[-1][1] and row.best == min(fid for _, fid in fids)
        # Tune saw every report with images_seen, its clock, one every 32 images, each with a fresh evaluation.
        results = tune_results(sweep, row.trial)
        assert [result["images_seen"] for result in results] == [32 * (index + 1) for index in range(len(results))]
        assert all(result["images_seen"] == result["step"] * batch == result["eval/step"] * batch
                   for result in results)
        assert row.images_seen == results[-1]["images_seen"] == row.steps * batch
        if row.status == "finished":
            assert row.images_seen == 64 and (Path(row.workdir) / "generator.keras").exists()
        else:  # stopped by ASHA at its 32-image report; it may train on while Tune stops it
            assert 32 <= row.images_seen <= 64 and not (Path(row.workdir) / "status.json").exists()
        # W&B: each trial its own run, in the sweep's group.
        assert config["wandb_group"] == plan.name == "sweep"
        [run_file] = run_files(Path(row.workdir))
        run = read_run(run_file)
        assert (run.group, run.name) == ("sweep", row.trial)
        assert run.run_id == json.loads((Path(row.workdir) / "wandb-run.json").read_text())["id"]
    assert len(lrs) == 2 and rows[64].hyperparameters["lr"] not in lrs

    # The table, as CSV and JSON, says the same as the outcome.
    table = json.loads((sweep / "trials.json").read_text())
    assert (table["metric"], table["best_trial"]) == ("eval/fid", outcome.best.trial)
    assert [(item["trial"], item["status"], item["hyperparameters"]) for item in table["trials"]] == [
        (row.trial, row.status, row.hyperparameters) for row in outcome.rows]
    with open(sweep / "trials.csv", newline="") as file:
        csv_rows = list(csv.DictReader(file))
    assert [(item["trial"], item["status"], int(item["batch_size"]), float(item["lr"])) for item in csv_rows] == [
        (row.trial, row.status, row.hyperparameters["batch_size"], row.hyperparameters["lr"])
        for row in outcome.rows]
    assert csv_rows[2]["error"] == failed.error and csv_rows[2]["final eval/fid"] == ""

    # The best: Tune's, the lowest last reported FID.
    assert outcome.best == min((row for row in outcome.rows if row.final is not None), key=lambda row: row.final)
    best_trial_config = json.loads((Path(outcome.best.workdir) / "config.json").read_text())
    assert cli_main(["train", "--config", str(sweep / "best-config.json"), "--dry-run",
                     "--workdir", str(tmp_path / "again")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {**best_trial_config, "workdir": str(tmp_path / "again"), "wandb_group": None}
    if outcome.best.status == "finished":  # a trial stopped early has checkpoints but no generator.keras
        assert (sweep / "best-generator.keras").read_bytes() == (
            Path(outcome.best.workdir) / "generator.keras").read_bytes()
    assert (sweep / "best-generator" / "saved_model.pb").stat().st_size > 0
    best = json.loads((sweep / "best.json").read_text())
    assert (best["trial"], best["final"]) == (outcome.best.trial, outcome.best.final)


def checkpoint_files(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())["files"]


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_pbt_copies_a_better_trials_checkpoint_into_a_worse_one_which_continues_from_it(ray_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    # The discriminator's rate alone differs, from far too slow to far too fast: the trials rank by it (loss/g
    # grows with it) from the first reports on, so the best trial holds a checkpoint PBT hands on, and the
    # worst takes it. No data: the demo faces. Four trials at once (0.5 CPU each), 8 steps of 8 images; a
    # report and a checkpoint every 2 steps, each a perturbation point but the last: three rounds.
    space = space_file(tmp_path, "discriminator_lr: {grid: [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2]}\n")
    base = TrainConfig(workdir=str(sweep), batch_size=8, generator_lr=2e-4, cpus_per_worker=0.5, log_every=1,
                       sample_every=2, keep_checkpoints=10, **TINY)
    fixed = {"workdir", "batch_size", "generator_lr", "cpus_per_worker", "log_every", "sample_every",
             "keep_checkpoints", *TINY}
    plan = plan_sweep(base, SweepSettings(trials=1, max_images=64, report_every_images=16, perturb_every_images=16,
                                          scheduler="pbt", metric="loss/g", search_space=space), fixed)
    outcome = execute_sweep(plan)

    assert [(row.status, row.steps, row.images_seen) for row in outcome.rows] == [("finished", 8, 64)] * 4
    for row in outcome.rows:  # every result carries images_seen, PBT's clock: one every 16 images
        assert all(result["images_seen"] == result["step"] * 8 and result["images_seen"] % 16 == 0
                   for result in tune_results(sweep, row.trial))
    # PBT's log: one line per exploit, [recipient's tag, donor's tag, ..., donor's values, new values].
    exploits = [json.loads(line) for line in (sweep / "tune" / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no trial exploited another in this sweep"
    recipients = {f"trial-{int(tag.split('_')[0]):04d}": values for tag, _, _, _, _, values in exploits}
    for trial, values in recipients.items():  # the last exploit of each recipient is the run it holds now
        workdir = sweep / "trials" / trial
        assert list((workdir / "archive").iterdir()), "the run before the exploit was set aside"
        adopted = [folder for folder in sorted((workdir / "checkpoints").glob("checkpoint-*"))
                   if json.loads((folder / "state.json").read_text())["config"]["workdir"] != str(workdir)]
        assert len(adopted) == 1, adopted
        state = json.loads((adopted[0] / "state.json").read_text())
        step, donor = state["step"], Path(state["config"]["workdir"])
        # The weights are the donor's at that step (its own folder, or its archive if it was exploited since).
        [original] = [folder for folder in [donor / "checkpoints" / adopted[0].name,
                                            *donor.glob(f"archive/*/checkpoints/{adopted[0].name}")]
                      if folder.exists() and checkpoint_files(folder) == state["files"]]
        assert (original / "generator.weights.h5").read_bytes() == (adopted[0] / "generator.weights.h5").read_bytes()
        # The run continued from that step, with the value PBT gave it: the donor's, or a neighbour in the grid.
        rows = metric_rows(str(workdir))
        assert [row["step"] for row in rows] == list(range(step + 1, 9))
        config = json.loads((workdir / "config.json").read_text())
        assert config["discriminator_lr"] == values["discriminator_lr"] in (1e-5, 1e-4, 1e-3, 1e-2)
        for row in rows:
            assert row["lr/discriminator"] == pytest.approx(values["discriminator_lr"], rel=1e-6)
            assert row["lr/generator"] == pytest.approx(2e-4, rel=1e-6)
    assert outcome.best == min(outcome.rows, key=lambda row: row.final)
    assert (sweep / "winners.png").stat().st_size > 0
    # Tune's copies of the checkpoints only moved between trials: gone once the sweep ended.
    assert not list((sweep / "tune").glob("trial-*/checkpoint_*"))


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_a_killed_sweep_started_again_keeps_its_finished_trials_and_completes_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    # No --data: the trials train on the built-in demo set, which the command puts into the sweep once.
    command = [sys.executable, "-m", "animegan", "tune", "--workdir", str(sweep), "--trials", "2",
               "--concurrent", "1", "--max-steps", "6", "--report-every-images", "24", "--metric", "loss/d",
               "--scheduler", "fifo",
               "--checkpoint-every", "3", "--log-every", "3", "--sample-every", "100", "--batch-size", "8",
               "--cpus-per-worker", "1", *TINY_FLAGS]
    # The command starts (and must stop) its own local Ray instance, apart from the test session's.
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment["PYTHONUNBUFFERED"] = "1"
    # Tune saves its experiment state at most every ~10 s by default; the kill waits for a save.
    environment["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    first_trial = sweep / "trials" / "trial-0000"

    def tune_recorded_a_finished_trial() -> bool:
        # Only what Tune saved can be restored.
        return any("TERMINATED" in state.read_text() for state in (sweep / "tune").glob("experiment_state-*.json"))

    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not ((first_trial / "status.json").exists() and tune_recorded_a_finished_trial()):
            assert first.poll() is None, f"the sweep ended before it could be killed:\n{first_log.read_text()}"
            assert time.monotonic() < deadline, f"no finished trial after 600 s:\n{first_log.read_text()}"
            time.sleep(0.5)
        assert first.poll() is None and not (sweep / "trials.json").exists()
    finally:
        killed = kill_tree(first)  # the driver, its Ray instance and the Ray workers, all at once
    assert len(killed) > 5 and not any(is_running(pid) for pid in killed)
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in first_trial.rglob("*") if path.is_file()}
    assert json.loads((first_trial / "status.json").read_text())["status"] == "finished"

    second = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        output, _ = second.communicate(timeout=600)
        deadline = time.monotonic() + 60
        while group_alive(second.pid) and time.monotonic() < deadline:  # its Ray processes exit with it
            time.sleep(0.2)
        assert not group_alive(second.pid)
    finally:
        if group_alive(second.pid):
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    assert f"Resuming the sweep in {sweep}" in output
    # Tune did not start the finished trial again, and nothing in its workdir changed.
    assert "trial-0000: lr=" not in output and "trial-0001: lr=" in output
    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in first_trial.rglob("*") if path.is_file()}
    assert after == before
    table = json.loads((sweep / "trials.json").read_text())
    assert [(item["trial"], item["status"], item["steps"]) for item in table["trials"]] == [
        ("trial-0000", "finished", 6), ("trial-0001", "finished", 6)]
    assert [row["step"] for row in metric_rows(str(sweep / "trials" / "trial-0001"))] == [3, 6]
    [demo] = sweep.glob("demo-faces-*.zip")
    for trial in ("trial-0000", "trial-0001"):
        assert json.loads((sweep / "trials" / trial / "config.json").read_text())["data"] == str(demo)
        assert not list((sweep / "trials" / trial).glob("demo-faces-*.zip"))
