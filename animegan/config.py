"""The single source of hyperparameters: one typed, frozen config.

It crosses Ray and Tune as a plain dict (`to_dict` / `from_dict`), is written
resolved to the run's workdir as `config.json`, and its field metadata doubles
as the command line's help text, so a field, its flag and its documentation
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Mapping

IMAGE_SIZE = 64  # The architecture is fixed to 64x64x3 images, as in DCGAN.
WANDB_MODES = ("online", "offline", "disabled")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _option(default: Any, help: str, flag: str | None = None) -> Any:
    """A config field with its one-line help; `flag` overrides the derived flag name."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class TrainConfig:
    # Data and outputs.
    data: str | None = _option(None, "fsspec URL of training images (folder, glob, .zip, gs://...); default: the built-in demo faces")
    workdir: str = _option("", "where everything the run writes goes (local path or gs://); default ./runs/<timestamp>")

    # Cluster shape.
    workers: int = _option(1, "number of Ray Train workers (one TensorFlow replica each)")
    gpus_per_worker: float = _option(0.0, "GPUs per worker (0 trains on CPU)")
    cpus_per_worker: float = _option(0.0, "CPUs per worker; 0 shares the local machine's CPUs evenly between workers (1 on a cluster)")

    # Length.
    steps: int | None = _option(None, "training steps (one global batch each); default 1200 unless --epochs is given")
    epochs: float | None = _option(None, "training length in passes over the data; converted to steps")

    # Model.
    noise_dim: int = _option(300, "dimension of the generator's noise vector")
    generator_width: int = _option(64, "generator base width; layers are 8x, 4x, 2x, 1x this")
    discriminator_width: int = _option(64, "discriminator base width; layers are 1x, 2x, 4x, 8x this")

    # Optimisation.
    batch_size: int = _option(64, "global batch size, split evenly over the replicas")
    lr: float = _option(2e-4, "Adam learning rate for both networks", flag="--lr")
    generator_lr: float | None = _option(None, "generator learning rate; default --lr")
    discriminator_lr: float | None = _option(None, "discriminator learning rate; default --lr")
    beta1: float = _option(0.5, "Adam beta1 (0.5 as in the DCGAN paper)")
    beta2: float = _option(0.999, "Adam beta2")
    label_smoothing: float = _option(0.0, "one-sided label smoothing: real images are labelled 1 - this")
    ema_decay: float = _option(0.999, "decay of the generator's exponential moving average (0 turns it off)")

    # Speed (benchmarks/README.md has the measurements behind the defaults).
    precision: str = _option("float32", "float32, mixed_bfloat16 or mixed_float16 (16-bit compute, float32 weights; float16 with loss scaling)")
    jit: bool | None = _option(None, "XLA-compile the step's forward and backward passes; default: on with a GPU, off on CPU")

    # Augmentation of real images, as the seed notebook's ImageDataGenerator did.
    flip: bool = _option(True, "random horizontal flips")
    rotation: float = _option(10.0, "maximum random rotation in degrees (0 turns it off)")
    shift: float = _option(0.1, "maximum random shift as a fraction of width and height (0 turns it off)")

    # Cadence.
    log_every: int = _option(10, "steps between rows of metrics.jsonl")
    sample_every: int = _option(200, "steps between sample grids of the EMA generator")
    checkpoint_every: int = _option(200, "steps between checkpoints")
    keep_checkpoints: int = _option(3, "number of most recent checkpoints kept")
    max_failures: int = _option(3, "worker-group restarts from the latest checkpoint before the run fails")
    collective_timeout: float = _option(1800.0, "seconds a worker waits for the others in one step (its all-reduces, a checkpoint report) before the step fails and the worker group restarts")
    seed: int = _option(0, "seed for weights, noise, data order and augmentation")

    # Weights & Biases (rank 0 only; the API key comes from WANDB_API_KEY or `wandb login`, never from here).
    wandb_mode: str | None = _option(None, "W&B mode: online, offline or disabled; default WANDB_MODE, else online with an API key and offline without")
    wandb_project: str | None = _option(None, "W&B project; default WANDB_PROJECT, else 'animegan'")
    wandb_entity: str | None = _option(None, "W&B entity (user or team); default WANDB_ENTITY, else your default entity")
    wandb_group: str | None = _option(None, "W&B run group (a sweep's trials share one); default WANDB_RUN_GROUP")
    wandb_tags: str | None = _option(None, "comma-separated W&B tags; default WANDB_TAGS")
    wandb_log_model: bool = _option(False, "upload the exported generator to W&B as a model artifact at the end")

    # Evaluation (animegan/metrics): FID and KID of the EMA generator against real images it never trained on.
    holdout_fraction: float = _option(0.0, "fraction of the images held out from training (chosen by --seed) as the real images evaluation compares with")
    eval_every: int = _option(0, "steps between evaluations (FID, KID) of the EMA generator; 0 turns evaluation off")
    eval_samples: int = _option(1000, "generated images per evaluation (Inception-v3 costs ~6 GFLOP per image)")
    inception_weights: str = _option("imagenet", "Inception-v3 weights for evaluation: imagenet (from Keras's cache), a .h5 path or URL, or random (offline; figures not comparable with published FID)")

    # ------------------------------------------------------------------ helpers

    @property
    def resolved_generator_lr(self) -> float:
        return self.lr if self.generator_lr is None else self.generator_lr

    @property
    def resolved_discriminator_lr(self) -> float:
        return self.lr if self.discriminator_lr is None else self.discriminator_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Builds a config from plain values, rejecting unknown keys by name."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
            raise ValueError(f"unknown config field(s): {', '.join(hints)}")
        coerced = {key: _coerce(known[key], value) for key, value in values.items()}
        return cls(**coerced)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":
        """Raises ValueError naming the first bad field; returns self for chaining."""
        positive_ints = ["workers", "noise_dim", "generator_width", "discriminator_width", "batch_size",
                         "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"]
        for name in positive_ints:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"--{_flag_name(name)} must be a positive integer, got {value}")
        for name in ["lr", "generator_lr", "discriminator_lr"]:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{_flag_name(name)} must be positive, got {value}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"--steps must be a positive integer, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise ValueError("--gpus-per-worker and --cpus-per-worker must not be negative")
        if self.max_failures < -1:
            raise ValueError(f"--max-failures must be -1 (unlimited) or more, got {self.max_failures}")
        if not self.collective_timeout > 0:
            raise ValueError(f"--collective-timeout must be a positive number of seconds, got {self.collective_timeout}")
        for name in ["beta1", "beta2", "ema_decay"]:
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"--{_flag_name(name)} must be in [0, 1), got {value}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"--rotation must be between 0 and 180 degrees, got {self.rotation}")
        if not 0 <= self.shift < 1:
            raise ValueError(f"--shift must be in [0, 1), got {self.shift}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.wandb_mode is not None and self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"--wandb-mode must be one of {', '.join(WANDB_MODES)}, got {self.wandb_mode!r}")
        for tag in (self.wandb_tags or "").split(","):
            if len(tag.strip()) > 64:
                raise ValueError(f"--wandb-tags: W&B tags are at most 64 characters, got {tag.strip()!r}")

        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be 0 (off) or a positive number of steps, got {self.eval_every}")
        if self.eval_samples < 4:
            raise ValueError(f"--eval-samples must be at least 4 (KID compares subsets of half of them), "
                             f"got {self.eval_samples}")
        if not self.inception_weights.strip():
            raise ValueError("--inception-weights is empty; give imagenet, random, or the path of a weights file")
        replicas = self.replicas
        if self.batch_size % replicas:
            raise ValueError(
                f"--batch-size {self.batch_size} cannot be split evenly over {replicas} replicas "
                f"({self.workers} workers); use a multiple of {replicas}"
            )
        return self

    @property
    def replicas(self) -> int:
        """TensorFlow replicas in sync: one per worker, or one per GPU when a worker has several."""
        return self.workers * max(1, int(self.gpus_per_worker))


def model_signature(config: TrainConfig) -> dict[str, int]:
    """The config fields that fix the models' shapes; a checkpoint must match them to load."""
    return {
        "noise_dim": config.noise_dim,
        "generator_width": config.generator_width,
        "discriminator_width": config.discriminator_width,
    }


def _flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def flag_for(config_field: dataclasses.Field) -> str:
    return config_field.metadata.get("flag") or f"--{_flag_name(config_field.name)}"


def _coerce(config_field: dataclasses.Field, value: Any) -> Any:
    """Turns JSON/YAML scalars into the field's type with a clear message on mismatch."""
    if value is None:
        return None
    kind = str(config_field.type)
    try:
        if kind.startswith("bool"):
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in {"true", "yes", "1", "on"}:
                    return True
                if lowered in {"false", "no", "0", "off"}:
                    return False
                raise ValueError
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config field {config_field.name!r} expects {kind}, got {value!r}") from None
    return value


def load_config_file(path: str, kind: str = "config file") -> dict[str, Any]:
    """Reads a YAML or JSON config file (or another `kind` of field mapping) into a dict, validated later."""
    from animegan import storage

    suffix = PurePath(path).suffix.lower()
    if suffix not in {".json", ".yaml", ".yml"}:
        raise ValueError(f"{kind} must end in .json, .yaml or .yml, got {path}")
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ValueError(f"{kind} not found: {path}") from None
    if suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{kind} {path} is not valid JSON: {error}") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{kind} {path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{kind} {path} must hold a mapping of field names to values")
    return values
