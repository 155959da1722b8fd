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
ARCHITECTURES = ("dcgan", "dcgan-paper", "seed-notebook")
LOSSES = ("bce", "hinge")
DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")


def _option(default: Any, help: str, flag: str | None = None) -> Any:
    """A config field with its one-line help; `flag` overrides the derived flag name."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class TrainConfig:
    # Where the defaults come from.
    preset: str = _option("default", "start from a named recipe's values: default, or seed-notebook (the notebook animegan grew from); other flags override them")

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
    architecture: str = _option("dcgan", "layer layout: dcgan (Radford et al.'s ReLU generator; batch norm in every discriminator layer), dcgan-paper (the same without batch norm at D's input, as the paper has it: measured to learn faces slower; runs made before this option used it) or seed-notebook (LeakyReLU generator with biases, batch norm in every D layer)")
    spectral_norm: bool = _option(False, "spectrally normalise the discriminator's convolutions (Miyato et al., 2018)")
    discriminator_batch_norm: bool = _option(True, "batch normalisation in the discriminator's layers (all but the first with --architecture dcgan-paper)")
    minibatch_std: int = _option(0, "images per group of the discriminator's minibatch standard deviation feature (0 turns it off)")

    # Losses and regularisation.
    loss: str = _option("bce", "adversarial loss: bce (non-saturating) or hinge")
    diffaugment: str = _option("", "differentiable augmentation of every image the discriminator sees, e.g. color,translation,cutout ('' turns it off)")
    r1_gamma: float = _option(0.0, "weight of the R1 gradient penalty on real images (0 turns it off)")
    r1_every: int = _option(16, "steps between (lazy) R1 penalties, each weighted by this interval")

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

    # Untrusted images (animegan/data/header.py): larger ones are skipped unread and counted, as corrupt ones are.
    max_image_pixels: int = _option(16_000_000, "images with more pixels than this (width x height, for an animation all its frames) are skipped before decoding")
    max_image_bytes: int = _option(64 << 20, "image files, zip members and pack entries larger than this many bytes are skipped unread")
    # Decode once (animegan/data/pixel_cache.py): 12 KB of pixels per image, the rest spills to local disk.
    cache_memory: str = _option("25%", "memory each worker keeps decoded pixels in, so that only the first epoch decodes: a size (512MiB, 4GB), a percentage of the available memory, shared by a machine's workers, 0 (all on local disk) or off")

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
    wandb_checkpoint_every: int = _option(0, "upload every Nth checkpoint (N = this value) and the last to W&B as artifacts, and after a resume mark the one resumed from as the run's input; 0 uploads none")

    # Evaluation (animegan/metrics): FID and KID of the EMA generator against real images it never trained on.
    holdout_fraction: float = _option(0.0, "fraction of the images held out from training (chosen by --seed) as the real images evaluation compares with")
    eval_every: int = _option(0, "steps between evaluations (FID, KID) of the EMA generator; 0 turns evaluation off")
    eval_samples: int = _option(1000, "generated images per evaluation (Inception-v3 costs ~6 GFLOP per image)")
    inception_weights: str = _option("fid", "Inception-v3 weights for evaluation: fid (the standard FID network, from the cache `animegan fid-weights` fills), a copy of that cache folder (path or URL), or random (tests; figures not comparable with published FID)")

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
        preset = values.get("preset") or "default"
        if preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        # The preset's values lie beneath the given ones.
        values = {**PRESETS[preset], **values}
        coerced = {key: _coerce(known[key], value) for key, value in values.items()}
        return cls(**coerced)

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """A config read back from a checkpoint or workdir, written by this or an older animegan.

        Model fields the writer did not have yet take the values its networks
        were built with, not today's defaults.
        """
        missing = {name: value for name, value in MODEL_FIELDS_BEFORE_THEY_EXISTED.items() if name not in values}
        return cls.from_dict({**values, **missing})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":
        """Raises ValueError naming the first bad field; returns self for chaining."""
        positive_ints = ["workers", "noise_dim", "generator_width", "discriminator_width", "batch_size",
                         "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "r1_every",
                         "max_image_pixels", "max_image_bytes"]
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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        parse_diffaugment(self.diffaugment)
        if self.r1_gamma < 0:
            raise ValueError(f"--r1-gamma must not be negative, got {self.r1_gamma}")
        if self.minibatch_std < 0 or self.minibatch_std == 1:
            raise ValueError(f"--minibatch-std must be 0 (off) or a group of 2 or more images, got {self.minibatch_std}")
        if self.minibatch_std and (self.batch_size // self.replicas) % self.minibatch_std:
            raise ValueError(f"--minibatch-std {self.minibatch_std} must divide each replica's batch of "
                             f"{self.batch_size // self.replicas} images")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.wandb_checkpoint_every < 0:
            raise ValueError(f"--wandb-checkpoint-every must be 0 (off) or a positive number of checkpoints, "
                             f"got {self.wandb_checkpoint_every}")
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
        from animegan.data.pixel_cache import parse_cache_memory  # numpy only: no TensorFlow in the driver

        parse_cache_memory(self.cache_memory)
        if not self.inception_weights.strip():
            raise ValueError("--inception-weights is empty; give fid, random, or a copy of the FID weights folder")
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


# The fields that fix the networks' variables: a checkpoint must match them to load.
MODEL_FIELDS = ("noise_dim", "generator_width", "discriminator_width", "architecture", "spectral_norm",
                "discriminator_batch_norm", "minibatch_std")


# Named recipes: the values `--preset NAME` puts beneath the flags.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The notebook's recipe, as benchmarks/seed_reference.py writes it plainly in Keras: its layout,
    # plain non-saturating BCE, Adam 2e-4 / 0.5 for both networks, ImageDataGenerator's augmentation
    # of real images, and samples from the live generator (no EMA).
    "seed-notebook": dict(
        architecture="seed-notebook", noise_dim=300, generator_width=64, discriminator_width=64,
        spectral_norm=False, discriminator_batch_norm=True, minibatch_std=0,
        loss="bce", label_smoothing=0.0, diffaugment="", r1_gamma=0.0,
        lr=2e-4, generator_lr=None, discriminator_lr=None, beta1=0.5, beta2=0.999, ema_decay=0.0,
        flip=True, rotation=10.0, shift=0.1,
    ),
}

# What checkpoints written before a model field existed were built with.
# Runs made before --architecture had the paper's discriminator (no batch norm at its input), now dcgan-paper.
MODEL_FIELDS_BEFORE_THEY_EXISTED = {"architecture": "dcgan-paper", "spectral_norm": False,
                                    "discriminator_batch_norm": True, "minibatch_std": 0}


def saved_model_signature(saved_config: Mapping[str, Any]) -> dict[str, Any]:
    """model_signature of a config read from a checkpoint, older ones included."""
    return {name: saved_config.get(name, MODEL_FIELDS_BEFORE_THEY_EXISTED.get(name)) for name in MODEL_FIELDS}


def model_signature(config: TrainConfig) -> dict[str, Any]:
    """The config fields that fix the models' shapes; a checkpoint must match them to load."""
    return {name: getattr(config, name) for name in MODEL_FIELDS}


def parse_diffaugment(policy: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> ('color', 'translation', 'cutout'); '' -> () (off)."""
    parts = tuple(part.strip() for part in policy.split(",") if part.strip())
    unknown = [part for part in parts if part not in DIFFAUGMENT_POLICIES]
    if unknown:
        raise ValueError(f"--diffaugment: unknown transform(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(DIFFAUGMENT_POLICIES)} (comma-separated), or '' for none")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--diffaugment {policy!r} names a transform twice")
    return parts


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
