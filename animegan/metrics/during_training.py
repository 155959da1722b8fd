"""Evaluation inside the training loop: every `eval_every` steps, FID and KID of the EMA generator.

Rank 0 does all of the work (generation, Inception features, metrics) while
the other workers wait in `ray.train.report`, which every worker calls at
every evaluation step (it is a barrier, and Ray must see the same number of
reports from each worker). Why rank 0 alone: the evaluation then adds no
collective operation to the loop, so an evaluation cannot leave workers
stranded inside one, and only one process holds Inception-v3. The cost is
about 6 GFLOP per image (`eval/seconds` reports it), paid every `eval_every`
steps; sharding the images over the workers and all-gathering the features is
the next step if evaluation ever dominates a run.

Ray's reports carry the latest evaluation (with `eval/step`, the step it
comes from) from the first evaluation on, so a Tune search on `eval/fid` finds
the metric in every result after it; with `--checkpoint-every` a multiple of
`--eval-every` that is every result.

The real images are the held-out split of the data index (never trained on);
without one (`--holdout-fraction 0`), a sample of training images stands in,
and every row says so.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from animegan import storage
from animegan.config import TrainConfig
from animegan.data.index import DataIndex
from animegan.metrics.evaluation import Evaluator, Reference, sample_items
from animegan.metrics.features import BATCH_SIZE, FID_LABEL, RANDOM_LABEL, InceptionExtractor, locate_weights
from animegan.workdir import RunLayout

TRAINING_METRICS = ("fid", "kid")
# Noise seed of evaluation images: the images `animegan eval` and `animegan generate` make by default.
EVAL_SEED = 0
REAL_STATS_FOLDER = "real-stats"  # in the workdir: cached features of the reference images


def real_stats_cache(workdir: str) -> str:
    return storage.join(workdir, REAL_STATS_FOLDER)


def training_reference(index: DataIndex, config: TrainConfig) -> Reference:
    """The held-out images, or a labelled stand-in sample of training images when there are none."""
    if index.holdout:
        return Reference(index.source, tuple(index.holdout),
                         f"{len(index.holdout)} held-out images of {index.source} (never trained on)")
    items = sample_items(index.items, config.eval_samples, config.seed)
    return Reference(index.source, tuple(items),
                     f"{len(items)} TRAINING images of {index.source} (no --holdout-fraction: this measures "
                     f"fit to the training data, not generalisation)")


def check_evaluation(config: TrainConfig, index: DataIndex, log: Callable[[str], None] = print) -> None:
    """In the driver, before Ray starts: the weights can be found, and what evaluation will compare."""
    if not config.eval_every:
        return
    network = RANDOM_LABEL if locate_weights(config.inception_weights) is None else FID_LABEL
    reference = training_reference(index, config)
    log(f"Evaluation every {config.eval_every} steps: FID and KID of {config.eval_samples} EMA-generator images "
        f"against {reference.label}; network: {network}")


def latest_evaluation(metrics_url: str, resume_step: int) -> dict[str, Any]:
    """The last eval/* row of metrics.jsonl at or before the resume step, with its step as eval/step."""
    if not resume_step or not storage.exists(metrics_url):
        return {}
    latest: dict[str, Any] = {}
    for line in storage.read_text(metrics_url).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if "eval/fid" in row and row.get("step", 0) <= resume_step:
            latest = {**{key: value for key, value in row.items() if key.startswith("eval/")},
                      "eval/step": row["step"]}
    return latest


class TrainingEvaluation:
    """Decides when to evaluate (the same on every worker) and evaluates on rank 0."""

    def __init__(self, config: TrainConfig, layout: RunLayout, index: DataIndex, is_chief: bool,
                 log: Callable[[str], None] = print, resume_step: int = 0):
        self.config = config
        self.is_chief = is_chief
        self.log = log
        self.reference = training_reference(index, config)
        self.evaluator: Evaluator | None = None
        if is_chief:
            # Batches no larger than an evaluation: the extractor pads every batch to its traced size.
            extractor = InceptionExtractor(config.inception_weights, batch_size=min(BATCH_SIZE, config.eval_samples))
            self.evaluator = Evaluator(extractor, self.reference, real_stats_cache(layout.workdir), log)
        self._generator = None
        # The last evaluation's row and its step (rank 0), for Ray's reports; after a restart, from metrics.jsonl.
        self.latest: dict[str, Any] = latest_evaluation(layout.metrics, resume_step) if is_chief else {}

    @classmethod
    def create(cls, config: TrainConfig, layout: RunLayout, index: DataIndex, is_chief: bool,
               log: Callable[[str], None] = print, resume_step: int = 0) -> "TrainingEvaluation | None":
        return cls(config, layout, index, is_chief, log, resume_step) if config.eval_every else None

    def due(self, step: int, is_last: bool) -> bool:
        """A function of the step alone, so every worker agrees (each must report at the same steps)."""
        return step % self.config.eval_every == 0 or is_last

    def run(self, step: int, ema_generator) -> dict[str, Any]:
        """The eval/* row on rank 0; {} on the other workers."""
        if not self.is_chief:
            return {}
        from animegan.generation import LoadedGenerator

        scores = self.evaluator.evaluate_generator(
            LoadedGenerator(self._plain_copy(ema_generator), step, "training", self.config.noise_dim),
            self.config.eval_samples, EVAL_SEED, TRAINING_METRICS)
        row = {f"eval/{name}": value for name, value in scores.items()}
        row["eval/extractor"] = self.evaluator.extractor.label
        row["eval/reference"] = self.reference.label
        self.latest = {**row, "eval/step": step}
        self.log(f"Evaluation at step {step}: FID {scores['fid']:.4g}, KID {scores['kid']:.4g} "
                 f"± {scores['kid_std']:.2g} ({self.config.eval_samples} images, {scores['seconds']:.0f} s; "
                 f"{row['eval/extractor']})")
        return row

    def _plain_copy(self, ema_generator):
        # A copy outside the distribution strategy: inference on rank 0 alone must not touch mirrored variables.
        if self._generator is None:
            from animegan.models import build_generator

            self._generator = build_generator(self.config, name="eval_generator")
        self._generator.set_weights(ema_generator.get_weights())
        return self._generator
