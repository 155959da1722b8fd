"""Evaluation end to end: the held-out split, evaluation during a real Ray training run, and `animegan eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from animegan.cli import main
from animegan.config import TrainConfig
from animegan.data.index import DataIndex, index_for
from tests.support.images import write_folder


@pytest.fixture(scope="module")
def random_extractor():
    from animegan.metrics.features import InceptionExtractor

    return InceptionExtractor("random", batch_size=16)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the held-out split


def test_holdout_split_is_deterministic_disjoint_and_sized_by_the_fraction():
    listing = [f"img-{index:03d}.png" for index in range(200)]
    index = DataIndex.split("/data", listing, holdout_fraction=0.1, seed=3)
    assert len(index.holdout) == 20 and len(index.items) == 180
    assert set(index.items).isdisjoint(index.holdout) and set(index.items) | set(index.holdout) == set(listing)
    assert index.items == sorted(index.items) and index.holdout == sorted(index.holdout)
    assert DataIndex.split("/data", listing, 0.1, seed=3) == index
    assert DataIndex.split("/data", listing, 0.1, seed=4).holdout != index.holdout
    assert DataIndex.split("/data", listing[:5], 0.01, seed=0).holdout  # a positive fraction holds out at least one
    assert DataIndex.split("/data", listing, 0.0, seed=3).items == listing


def test_holdout_split_rejects_fractions_that_leave_nothing_to_train_on():
    with pytest.raises(ValueError, match="--holdout-fraction must be in \\[0, 1\\), got 1.5"):
        DataIndex.split("/data", ["a", "b"], 1.5)
    with pytest.raises(ValueError, match="--holdout-fraction 0.9 of 2 images at /data leaves no images to train on"):
        DataIndex.split("/data", ["a", "b"], 0.9)


def test_stored_index_is_reused_and_an_index_without_holdout_fields_still_loads(tmp_path):
    write_folder(tmp_path / "data", 10)
    source, index_url = str(tmp_path / "data"), str(tmp_path / "data-index.json")
    first = index_for(source, index_url, holdout_fraction=0.2, seed=1)
    assert len(first.holdout) == 2
    assert index_for(source, index_url, holdout_fraction=0.2, seed=1) == first
    # Indexes written before the split existed hold only source and items.
    (tmp_path / "old-index.json").write_text(json.dumps({"source": source, "items": first.items}))
    old = DataIndex.load(str(tmp_path / "old-index.json"))
    assert old.items == first.items and old.holdout == [] and old.holdout_fraction == 0.0


def test_resuming_with_another_split_is_refused_rather_than_leaking_held_out_images(tmp_path):
    write_folder(tmp_path / "data", 10)
    source, index_url = str(tmp_path / "data"), str(tmp_path / "data-index.json")
    index_for(source, index_url, holdout_fraction=0.0)
    with pytest.raises(ValueError, match="holds out 0.0 of the images.*--holdout-fraction 0.2.*would mix"):
        index_for(source, index_url, holdout_fraction=0.2, seed=0)
    index_for(str(tmp_path / "data"), str(tmp_path / "other-index.json"), holdout_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match="Use --holdout-fraction 0.2 --seed 0, or a new --workdir"):
        index_for(source, str(tmp_path / "other-index.json"), holdout_fraction=0.2, seed=5)


def test_the_training_pipeline_never_reads_held_out_images(tmp_path):
    from animegan.data.pipeline import encoded_images
    from animegan.data.sources import FileSource

    class RecordingSource(FileSource):
        """A real folder source that records every item it is asked to read."""

        def __init__(self, url):
            super().__init__(url)
            self.read_items: list[str] = []

        def read(self, items):
            self.read_items.extend(items)
            yield from super().read(items)

    write_folder(tmp_path / "data", 24)
    index = index_for(str(tmp_path / "data"), str(tmp_path / "data-index.json"), holdout_fraction=0.25, seed=0)
    assert len(index.holdout) == 6
    for rank in range(2):
        source = RecordingSource(str(tmp_path / "data"))
        stream = encoded_images(source, index.items, rank=rank, world_size=2, seed=0)
        for _ in range(3 * len(index.items) // 2):  # three epochs of this worker's shard
            next(stream)
        assert set(source.read_items) <= set(index.items)
        assert not set(source.read_items) & set(index.holdout)


# ---------------------------------------------------------------- config and the driver's checks


def test_evaluation_config_fields_validate_with_clear_messages():
    assert TrainConfig().eval_every == 0 and TrainConfig().holdout_fraction == 0.0  # off unless asked for
    with pytest.raises(ValueError, match="--holdout-fraction must be in \\[0, 1\\), got 1.0"):
        TrainConfig(holdout_fraction=1.0).validate()
    with pytest.raises(ValueError, match="--eval-every must be 0 \\(off\\) or a positive number of steps, got -1"):
        TrainConfig(eval_every=-1).validate()
    with pytest.raises(ValueError, match="--eval-samples must be at least 4"):
        TrainConfig(eval_samples=3).validate()
    with pytest.raises(ValueError, match="--inception-weights is empty"):
        TrainConfig(inception_weights="").validate()


def test_training_flags_include_the_evaluation_fields():
    from animegan.cli import build_parser

    args = build_parser().parse_args(["train", "--eval-every", "500", "--eval-samples", "64",
                                      "--holdout-fraction", "0.05", "--inception-weights", "random"])
    assert (args.eval_every, args.eval_samples, args.holdout_fraction, args.inception_weights) == (
        500, 64, 0.05, "random")


def test_missing_inception_weights_stop_the_run_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANIMEGAN_CACHE", str(tmp_path / "empty-cache"))
    write_folder(tmp_path / "data", 20)
    status = main(["train", "--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "run"),
                   "--batch-size", "4", "--eval-every", "10", "--holdout-fraction", "0.2"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("animegan: error: the FID Inception weights are not in")
    assert "\n" not in error and "run `animegan fid-weights` once" in error and "--inception-weights random" in error


def test_eval_with_an_empty_cache_names_the_command_that_fills_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANIMEGAN_CACHE", str(tmp_path / "empty-cache"))
    write_folder(tmp_path / "data", 8)
    status = main(["eval", "--images", str(tmp_path / "data"), "--data", str(tmp_path / "data")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error
    assert error.startswith("animegan: error: the FID Inception weights are not in ") and "`animegan fid-weights`" in error


def test_resolve_holds_out_images_and_says_what_evaluation_compares(tmp_path):
    from animegan.launcher import resolve

    write_folder(tmp_path / "data", 20)
    messages: list[str] = []
    config = TrainConfig(data=str(tmp_path / "data"), workdir=str(tmp_path / "run"), batch_size=4, steps=10,
                         eval_every=5, holdout_fraction=0.2, inception_weights="random")
    _, index, _ = resolve(config, write=True, log=messages.append)
    assert len(index.items) == 16 and len(index.holdout) == 4
    assert DataIndex.load(str(tmp_path / "run" / "data-index.json")) == index
    assert any("Evaluation every 5 steps: FID and KID of 1000 EMA-generator images against 4 held-out images"
               in message for message in messages)
    # Without a held-out split, evaluation compares with training images and says so.
    messages.clear()
    resolve(config.replace(workdir=str(tmp_path / "run2"), holdout_fraction=0.0), write=False, log=messages.append)
    assert any("TRAINING images" in message and "not generalisation" in message for message in messages)


def test_eval_scores_a_folder_of_any_images_against_the_data_and_writes_json(tmp_path, capsys):
    from tests.support.images import encode

    write_folder(tmp_path / "real", 12)
    other = tmp_path / "other-model"
    other.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):  # another model's samples: noise, larger, JPEG; read at 64x64 like the data
        (other / f"sample-{index}.jpg").write_bytes(encode(rng.integers(0, 255, (96, 96, 3), np.uint8), "JPEG"))
    (other / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "scores.json"
    common = ["--data", str(tmp_path / "real"), "--inception-weights", "random", "--batch-size", "8"]
    assert main(["eval", "--images", str(other), *common, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Images: 10 at {other} (1 unreadable skipped" in printed and "Reference: 12 images of" in printed
    document = json.loads(out.read_text())
    (row,) = document["rows"]
    assert row["name"] == f"images at {other}" and row["images"] == 10 and document["reference_images"] == 12
    assert row["fid"] > 0 and row["kid"] > 0 and row["kid_std"] >= 0
    assert document["comparable_with_published_fid"] is False
    header = next(line for line in printed.splitlines() if line.startswith("images compared"))
    assert header.split()[2:6] == ["images", "FID", "KID", "KID"]
    # The data scored against itself: the same scale, and zero distance.
    assert main(["eval", "--images", str(tmp_path / "real"), *common, "--json", str(tmp_path / "self.json")]) == 0
    itself = json.loads((tmp_path / "self.json").read_text())["rows"][0]
    assert itself["fid"] < 1e-6 * row["fid"] and itself["kid"] < row["kid"]


# ---------------------------------------------------------------- the metrics tell bad from good


@pytest.fixture(scope="module")
def face_archive(tmp_path_factory) -> str:
    """The real faces when present; else a demo archive of drawn faces, so the test always runs."""
    from tests.conftest import REAL_FACES

    if REAL_FACES.exists():
        return str(REAL_FACES)
    from animegan.data.demo import write_demo_archive

    return write_demo_archive(str(tmp_path_factory.mktemp("faces") / "demo.zip"), count=160)


def test_an_untrained_generator_scores_far_worse_than_held_out_real_images(face_archive, random_extractor):
    from animegan.data.sources import list_images, open_source
    from animegan.generation import LoadedGenerator
    from animegan.metrics.evaluation import Evaluator, Reference, sample_items
    from animegan.models import build_generator

    count = 24
    index = DataIndex.split(face_archive, list_images(open_source(face_archive)), holdout_fraction=0.3, seed=0)
    training = sample_items(index.items, count, seed=0)
    evaluator = Evaluator(random_extractor, Reference(face_archive, tuple(training), "training images"), None,
                          log=lambda message: None)
    held_out = evaluator.scores(evaluator.real_features(face_archive, sample_items(index.holdout, count, 0)),
                                ["fid", "kid"])
    config = TrainConfig()
    untrained = evaluator.evaluate_generator(LoadedGenerator(build_generator(config), 0, "untrained",
                                                             config.noise_dim), count, metrics=["fid", "kid"])
    assert all(math.isfinite(value) for value in [*held_out.values(), *untrained.values()])
    assert untrained["fid"] > 10 * held_out["fid"]
    assert untrained["kid"] > 10 * max(held_out["kid"], held_out["kid_std"])
    assert untrained["kid"] > 5 * untrained["kid_std"]


# ---------------------------------------------------------------- a real training run with evaluation


@pytest.fixture(scope="module")
def evaluated_run(ray_cluster, tmp_path_factory):
    """12 steps on 2 workers, evaluating at 4, 8, 12 and checkpointing at 6, 12; returns Ray's Result too."""
    from animegan.launcher import build_trainer, resolve
    from animegan.workdir import RunLayout

    root = tmp_path_factory.mktemp("evaluated")
    write_folder(root / "data", 40)
    config = TrainConfig(data=str(root / "data"), workdir=str(root / "run"), steps=12, batch_size=8,
                         noise_dim=16, generator_width=8, discriminator_width=8, log_every=4,
                         checkpoint_every=6, sample_every=12, workers=2, cpus_per_worker=1,
                         holdout_fraction=0.25, eval_every=4, eval_samples=8, inception_weights="random")
    config, _, _ = resolve(config)
    result = build_trainer(config, RunLayout(config.workdir)).fit()
    return root, result


@pytest.mark.ray
def test_evaluation_during_training_reaches_metrics_jsonl_and_every_later_ray_report(evaluated_run):
    root, result = evaluated_run
    assert result.error is None and result.metrics["status"] == "finished" and result.metrics["step"] == 12
    rows = read_rows(root / "run" / "metrics.jsonl")
    evaluations = {row["step"]: row for row in rows if "eval/fid" in row}
    assert sorted(evaluations) == [4, 8, 12]
    for row in evaluations.values():
        assert math.isfinite(row["eval/fid"]) and row["eval/fid"] > 0
        assert math.isfinite(row["eval/kid"]) and row["eval/kid_std"] >= 0
        assert row["eval/extractor"] == "random-seed0 (not comparable with published FID)"
        assert row["eval/reference"].startswith("10 held-out images of ")
    # Training rows are unchanged by the evaluation rows next to them.
    assert [row["step"] for row in rows if "loss/d" in row] == [4, 6, 8, 12]
    # Ray Train's reports (what Tune optimises) carry the latest evaluation, even at step 6 (no evaluation there).
    reported = {metrics["step"]: metrics for _, metrics in result.best_checkpoints}
    assert reported[6]["eval/step"] == 4 and reported[6]["eval/fid"] == pytest.approx(evaluations[4]["eval/fid"])
    assert reported[12]["eval/step"] == 12 and result.metrics["eval/fid"] == pytest.approx(evaluations[12]["eval/fid"])
    # The held-out images' features were computed once and cached in the workdir.
    assert len(list((root / "run" / "real-stats").glob("real-*.npz"))) == 1
    index = DataIndex.load(str(root / "run" / "data-index.json"))
    assert len(index.holdout) == 10 and len(index.items) == 30


def test_a_restarted_run_reports_the_last_evaluation_before_its_checkpoint(tmp_path):
    from animegan.metrics.during_training import latest_evaluation

    rows = [{"step": 4, "loss/d": 1.0}, {"step": 4, "eval/fid": 9.0, "eval/kid": 0.5},
            {"step": 8, "eval/fid": 7.0, "eval/kid": 0.4}, {"step": 12, "eval/fid": 5.0, "eval/kid": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 1')
    url = str(tmp_path / "metrics.jsonl")
    assert latest_evaluation(url, resume_step=10) == {"eval/fid": 7.0, "eval/kid": 0.4, "eval/step": 8}
    assert latest_evaluation(url, resume_step=3) == {}
    assert latest_evaluation(url, resume_step=0) == {}
    assert latest_evaluation(str(tmp_path / "missing.jsonl"), resume_step=10) == {}


@pytest.mark.ray
def test_eval_command_repeats_the_training_evaluation_from_the_cached_reference(evaluated_run, capsys):
    root, _ = evaluated_run
    training_fid = [row for row in read_rows(root / "run" / "metrics.jsonl") if "eval/fid" in row][-1]["eval/fid"]
    cache = root / "run" / "real-stats"
    cached_before = sorted(path.name for path in cache.iterdir())
    out = root / "eval.json"
    status = main(["eval", "--checkpoint", str(root / "run"), "--data", str(root / "data"), "--num", "8",
                   "--inception-weights", "random", "--real-baseline", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "of 10 real images" not in printed  # the reference came from the cache, not from the images
    assert set(cached_before) < {path.name for path in cache.iterdir()}  # the baseline's features joined it
    document = json.loads(out.read_text())
    assert document["extractor"] == "random-seed0 (not comparable with published FID)"
    assert document["comparable_with_published_fid"] is False
    assert document["generator_step"] == 12 and document["reference_images"] == 10
    generator_row, baseline_row = document["rows"]
    assert generator_row["name"] == "generator (step 12)" and generator_row["images"] == 8
    # Same generator, same noise, same reference, another process: the same FID.
    assert generator_row["fid"] == pytest.approx(training_fid, rel=1e-3)
    assert baseline_row["name"] == "real images outside the reference" and baseline_row["images"] == 8
    assert all(row["extractor"] == document["extractor"] for row in document["rows"])
    assert generator_row["inception_score"] > 0  # a smoke number with the random classifier, and said so
    assert "smoke number only" in printed and "random-seed0 (not comparable with published FID)" in printed
    table_header = next(line for line in printed.splitlines() if line.startswith("images compared"))
    assert table_header.split()[2:] == ["images", "FID", "KID", "KID", "std", "IS", "IS", "std"]


@pytest.mark.ray
def test_eval_command_rejects_bad_input_with_one_line_messages(evaluated_run, tmp_path, capsys):
    root, _ = evaluated_run
    write_folder(tmp_path / "other", 6)
    cases = [
        ({"--num": "2"}, [], "--num must be at least 4"),
        ({"--num-real": "1"}, [], "--num-real must be at least 4"),
        ({"--inception-weights": str(tmp_path / "nope")}, [], "the FID Inception weights are not in"),
        ({"--data": str(tmp_path / "other")}, ["--real-baseline"], "--real-baseline needs real images outside"),
        ({"--checkpoint": str(tmp_path)}, [], "holds neither generator.keras nor a valid checkpoint"),
    ]
    for overrides, switches, message in cases:
        arguments = {"--checkpoint": str(root / "run"), "--data": str(root / "data"),
                     "--inception-weights": "random", **overrides}
        status = main(["eval", *[part for pair in arguments.items() for part in pair], *switches])
        error = capsys.readouterr().err.strip()
        assert status == 2, (overrides, error)
        assert error.startswith("animegan: error: ") and message in error and "\n" not in error
