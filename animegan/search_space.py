"""What a sweep searches: the default search space, the search-space file, and their checks.

The default space samples the learning rate log-uniformly over [1e-5, 1e-3]
(one rate for both networks, or one each with --separate-lr), the batch size
from {32, 64, 128, 256} and the noise dimension from {64, 100, 128, 300}. A
field set by a flag or by the --config file is fixed instead: it leaves the
default space (so `--batch-size 8` sweeps everything but the batch size).

A search-space file (YAML or JSON) adds or changes fields, one entry per
TrainConfig field:

    lr:           {loguniform: [1.0e-5, 1.0e-3]}   # low <= x <= high, sampled on a log scale
    beta1:        {uniform: [0.0, 0.9]}            # low <= x <= high
    batch_size:   {choice: [32, 64]}               # one of the values
    generator_width: {randint: [32, 129]}          # an integer, low <= x < high (as range())
    noise_dim:    {grid: [64, 128]}                # every value, each with --trials samples of the rest
    label_smoothing: 0.1                           # a constant for every trial
    discriminator_lr: null                         # take a field out of the default space

Everything that can be checked before a trial runs is checked here, with the
config's own validation: a value that no trial could use (a batch size that
does not split over the workers, a negative rate) stops the sweep before Ray
starts. What depends on the data or the machine (a batch larger than the data
set, out of memory) fails that trial only, and the sweep's table reports it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from animegan.config import TrainConfig, flag_for, load_config_file

RANGE_KINDS = ("loguniform", "uniform", "randint")
LIST_KINDS = ("choice", "grid")
KINDS = ("loguniform", "uniform", "choice", "randint", "grid")

# Fields a sweep fixes for all its trials, and why.
NOT_SEARCHABLE = {
    "data": "a sweep lists its data once for every trial",
    "workdir": "each trial's workdir is <sweep>/trials/<trial>",
    "steps": "every trial runs --max-steps steps (the scheduler compares trials step by step)",
    "epochs": "every trial runs --max-steps steps (the scheduler compares trials step by step)",
    "workers": "every trial has the same resources: set --workers-per-trial",
    "cpus_per_worker": "every trial has the same resources: set --cpus-per-worker",
    "gpus_per_worker": "every trial has the same resources: set --gpus-per-worker",
    "wandb_group": "a sweep's trials share one W&B group: set --wandb-group",
}


@dataclass(frozen=True)
class Dimension:
    """One searched field: how Tune samples it."""

    field: str
    kind: str  # one of KINDS
    values: tuple  # (low, high) for the range kinds, the values for choice and grid

    def to_tune(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "randint":
            return tune.randint(*self.values)
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))

    def edge_values(self) -> list[Any]:
        """The values that bound what Tune can sample: checking them checks the whole range."""
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)

    def to_dict(self) -> dict[str, list]:
        return {self.kind: list(self.values)}

    def describe(self) -> str:
        if self.kind in RANGE_KINDS:
            closing = ")" if self.kind == "randint" else "]"
            return f"{self.kind} [{self.values[0]:g}, {self.values[1]:g}{closing}"
        return f"{self.kind} {list(self.values)}"


@dataclass(frozen=True)
class SearchSpace:
    dimensions: dict[str, Dimension]
    constants: dict[str, Any]  # fields the file sets to one value for every trial

    def to_tune(self) -> dict[str, Any]:
        return {name: dimension.to_tune() for name, dimension in self.dimensions.items()}

    def to_dict(self) -> dict[str, Any]:
        """The plain form written to sweep.json (and read back by `from_dict`)."""
        return {"dimensions": {name: dimension.to_dict() for name, dimension in self.dimensions.items()},
                "constants": dict(self.constants)}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> "SearchSpace":
        dimensions = {name: _dimension(name, spec, "sweep.json") for name, spec in document["dimensions"].items()}
        return cls(dimensions, dict(document["constants"]))

    @property
    def grid_size(self) -> int:
        """How many trials each of --trials samples becomes (Tune repeats every grid value)."""
        return math.prod(len(dimension.values) for dimension in self.dimensions.values() if dimension.kind == "grid")

    def describe(self) -> str:
        parts = [f"{name} {dimension.describe()}" for name, dimension in self.dimensions.items()]
        parts += [f"{name} = {value!r}" for name, value in self.constants.items()]
        return "; ".join(parts) or "nothing (every field is fixed)"


def default_dimensions(separate_lr: bool = False) -> dict[str, Dimension]:
    rates = ["generator_lr", "discriminator_lr"] if separate_lr else ["lr"]
    dimensions = {name: Dimension(name, "loguniform", (1e-5, 1e-3)) for name in rates}
    dimensions["batch_size"] = Dimension("batch_size", "choice", (32, 64, 128, 256))
    dimensions["noise_dim"] = Dimension("noise_dim", "choice", (64, 100, 128, 300))
    return dimensions


def build_space(base: TrainConfig, fixed: set[str], *, separate_lr: bool = False,
                file: str | None = None) -> SearchSpace:
    """The default space without the fixed fields, changed by the file; every sampled value checked."""
    dimensions = {name: dimension for name, dimension in default_dimensions(separate_lr).items()
                  if name not in fixed}
    constants: dict[str, Any] = {}
    if file is not None:
        for name, spec in load_config_file(file, kind="search space file").items():
            where = f"search space file {file}"
            _check_field(name, where)
            dimensions.pop(name, None)
            if spec is None:
                continue  # taken out of the default space: the base config's value is used
            if name in fixed:
                raise ValueError(f"{where}: {name} is fixed by {flag_for(_field(name))} (or --config) and also "
                                 f"set in the search space; drop one of them")
            if isinstance(spec, Mapping):
                dimensions[name] = _dimension(name, spec, where)
            else:
                constants[name] = _coerced(name, spec, where)
    space = SearchSpace(dimensions, constants)
    check_values(base, space)
    return space


def check_values(base: TrainConfig, space: SearchSpace) -> None:
    """Raises ValueError for the first value Tune could sample that the config would refuse."""
    fixed = base.replace(**space.constants)
    try:
        fixed.validate()
    except ValueError as error:
        raise ValueError(f"search space constants: {error}") from None
    for name, dimension in space.dimensions.items():
        for value in dimension.edge_values():
            try:
                fixed.replace(**{name: value}).validate()
            except ValueError as error:
                raise ValueError(f"search space: {name} = {value!r} ({dimension.describe()}) cannot be used: "
                                 f"{error}") from None


def _field(name: str) -> dataclasses.Field:
    return {config_field.name: config_field for config_field in dataclasses.fields(TrainConfig)}[name]


def _check_field(name: str, where: str) -> None:
    try:
        TrainConfig.from_dict({name: None})
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if name in NOT_SEARCHABLE:
        raise ValueError(f"{where}: {name} cannot be searched: {NOT_SEARCHABLE[name]}")


def _coerced(name: str, value: Any, where: str) -> Any:
    """The value as the field's type (an int field accepts 64 or 64.0, not 64.5)."""
    if isinstance(value, (list, dict)):
        raise ValueError(f"{where}: {name}: expected one value or a mapping like {{choice: [...]}}, got {value!r}")
    try:
        return getattr(TrainConfig.from_dict({name: value}), name)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _dimension(name: str, spec: Mapping[str, Any], where: str) -> Dimension:
    if len(spec) != 1:
        raise ValueError(f"{where}: {name} must have exactly one of {', '.join(KINDS)}, got {dict(spec)!r}")
    [(kind, values)] = spec.items()
    if kind not in KINDS:
        raise ValueError(f"{where}: {name}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    field_type = str(_field(name).type)
    is_float, is_int = field_type.startswith("float"), field_type.startswith("int")
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {name}: {kind} takes a list, got {values!r}")
    if kind in LIST_KINDS:
        return Dimension(name, kind, tuple(_coerced(name, value, where) for value in values))

    numbers = [_number(value) for value in values]
    if len(numbers) != 2 or None in numbers:
        raise ValueError(f"{where}: {name}: {kind} takes [low, high], two numbers, got {values!r}")
    low, high = numbers
    if kind == "randint" and not is_int:
        raise ValueError(f"{where}: {name} is not an integer field: randint is for integer fields")
    if kind != "randint" and not is_float:
        alternatives = "choice, grid or randint" if is_int else "choice or grid"
        raise ValueError(f"{where}: {name} is not a float field: use {alternatives}, not {kind}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{where}: {name}: randint takes two integers, got {values!r}")
    if not low < high:
        raise ValueError(f"{where}: {name}: {kind} needs low < high, got {values!r}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: {name}: loguniform needs 0 < low, got {values!r}")
    if kind == "randint":
        return Dimension(name, kind, (int(low), int(high)))
    return Dimension(name, kind, (float(low), float(high)))


def _number(value: Any) -> float | None:
    """A number, or None. YAML reads 1e-5 (no decimal point) as a string, so numeric strings count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
