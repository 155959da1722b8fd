"""Command-line flags derived from TrainConfig's fields, and config resolution: defaults < file < flags."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from animegan.config import TrainConfig, flag_for, load_config_file


def _parser_type(config_field: dataclasses.Field):
    kind = str(config_field.type)
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def add_config_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per config field, with the field's help; unset flags stay out of the namespace."""
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of config fields; flags win over it")
    group = parser.add_argument_group("training config (see config.json in any workdir)")
    for config_field in dataclasses.fields(TrainConfig):
        if config_field.name in exclude:
            continue
        flag = flag_for(config_field)
        default = config_field.default
        # argparse formats help with %: a literal one (a default of 25%) must be doubled.
        help_text = f"{config_field.metadata['help']} (default: {default})".replace("%", "%%")
        if str(config_field.type) in ("bool", "bool | None"):
            group.add_argument(flag, dest=config_field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, dest=config_field.name, type=_parser_type(config_field),
                               default=argparse.SUPPRESS, metavar=config_field.name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, overridden by --config FILE, overridden by flags given on the command line."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    names = {config_field.name for config_field in dataclasses.fields(TrainConfig)}
    values.update({name: value for name, value in vars(args).items() if name in names})
    return TrainConfig.from_dict(values).validate()
