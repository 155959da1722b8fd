"""The config: defaults that run, every bad value rejected with a message naming it, files and flags."""

from __future__ import annotations

import argparse
import json

import pytest

from animegan.commands.config_flags import add_config_flags, config_from_args
from animegan.config import TrainConfig, load_config_file


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_are_the_notebook_model_and_validate():
    config = TrainConfig().validate()
    assert (config.noise_dim, config.generator_width, config.discriminator_width) == (300, 64, 64)
    assert (config.lr, config.beta1, config.batch_size) == (2e-4, 0.5, 64)
    assert config.resolved_generator_lr == config.resolved_discriminator_lr == 2e-4


def test_separate_learning_rates_override_the_shared_one():
    config = TrainConfig(lr=1e-3, generator_lr=5e-4)
    assert config.resolved_generator_lr == 5e-4
    assert config.resolved_discriminator_lr == 1e-3


@pytest.mark.parametrize("changes, message", [
    ({"lr": 0.0}, "--lr must be positive, got 0.0"),
    ({"lr": -1e-4}, "--lr must be positive"),
    ({"generator_lr": -1.0}, "--generator-lr must be positive"),
    ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
    ({"noise_dim": -3}, "--noise-dim must be a positive integer, got -3"),
    ({"generator_width": 0}, "--generator-width must be a positive integer"),
    ({"workers": 0}, "--workers must be a positive integer"),
    ({"steps": 0}, "--steps must be a positive integer, got 0"),
    ({"epochs": -1.0}, "--epochs must be positive"),
    ({"steps": 10, "epochs": 1.0}, "give --steps or --epochs, not both"),
    ({"batch_size": 10, "workers": 4}, "--batch-size 10 cannot be split evenly over 4 replicas"),
    ({"beta1": 1.0}, "--beta1 must be in [0, 1)"),
    ({"label_smoothing": 0.7}, "--label-smoothing must be in [0, 0.5)"),
    ({"rotation": 200.0}, "--rotation must be between 0 and 180 degrees"),
    ({"shift": 1.5}, "--shift must be in [0, 1)"),
])
def test_bad_values_are_rejected_with_the_flag_name(changes, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**changes).validate()
    assert message in str(error.value)


def test_dict_round_trip_is_exact():
    config = TrainConfig(data="gs://bucket/faces", steps=123, lr=3e-4, flip=False, rotation=0.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_fields_are_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown config field\(s\): 'noise_dims' \(did you mean 'noise_dim'\?\)"):
        TrainConfig.from_dict({"noise_dims": 100})


def test_wrong_types_are_named():
    with pytest.raises(ValueError, match="config field 'batch_size' expects int, got 'big'"):
        TrainConfig.from_dict({"batch_size": "big"})
    with pytest.raises(ValueError, match="config field 'flip' expects bool"):
        TrainConfig.from_dict({"flip": "sometimes"})


def test_yaml_and_json_files_load_and_flags_win(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("lr: 0.0005\nbatch_size: 32\nflip: false\n")
    config = parse(["--config", str(yaml_file), "--batch-size", "16"])
    assert (config.lr, config.batch_size, config.flip) == (5e-4, 16, False)

    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"noise_dim": 100, "rotation": 0}))
    config = parse(["--config", str(json_file), "--flip"])
    assert (config.noise_dim, config.rotation, config.flip) == (100, 0.0, True)


def test_config_file_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        load_config_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_config_file(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config_file(str(listed))
    with pytest.raises(ValueError, match="must end in .json, .yaml or .yml"):
        load_config_file(str(tmp_path / "run.toml"))


def test_every_field_has_help_and_a_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    text = parser.format_help()
    for flag in ["--data", "--workdir", "--workers", "--gpus-per-worker", "--steps", "--epochs", "--batch-size",
                 "--lr", "--noise-dim", "--sample-every", "--checkpoint-every", "--seed", "--config"]:
        assert flag in text
