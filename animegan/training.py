"""The distributed training loop: Ray Train's `train_loop_per_worker`.

Every worker runs this function under `MultiWorkerMirroredStrategy` (Ray sets
TF_CONFIG). Workers run exactly the same sequence of collective operations:
the step, the metric reduction, the stop agreement (animegan/preemption.py),
sampling and the checkpoint report happen on every worker at the same steps,
and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from animegan.config import TrainConfig
from animegan.workdir import RunLayout

logger = logging.getLogger(__name__)

SAMPLE_GRID_SIZE = 64  # 8x8 fixed-noise samples


def steps_per_epoch(num_items: int, config: TrainConfig) -> int:
    """Global steps in one pass over the data, with every worker reading its own equal share."""
    per_worker_items = num_items // config.workers
    per_worker_batch = config.batch_size // config.workers
    return max(1, per_worker_items // per_worker_batch)


def data_position(step: int, num_items: int, config: TrainConfig) -> tuple[int, int]:
    """(epoch, items of its shard each worker has consumed in that epoch) after `step` global steps.

    A worker's stream runs on across epochs without a gap (an epoch's last partial
    batch is completed from the next epoch), so the position is counted in items,
    not in whole epochs of steps.
    """
    per_worker_items = num_items // config.workers
    consumed = step * (config.batch_size // config.workers)
    return consumed // per_worker_items, consumed % per_worker_items


def images_seen(step: int, config: TrainConfig) -> int:
    """Real images the discriminator has seen after `step` global steps: a sweep's clock, whatever the batch size."""
    return step * config.batch_size


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e6


def _configure_worker(config: TrainConfig) -> None:
    import tensorflow as tf

    # TensorFlow's Python logger repeats every strategy message at INFO level.
    tf.get_logger().setLevel("WARNING")

    # Ray sets OMP_NUM_THREADS to the worker's CPUs but TensorFlow ignores it: without
    # this, two workers on one machine each start a thread per core and fight.
    cpus = int(config.cpus_per_worker) if config.cpus_per_worker >= 1 else 0
    if cpus:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, cpus))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Trains until `config.steps`, resuming from the newest valid checkpoint in the workdir.

    A step that waits longer than --collective-timeout for the other workers fails
    with a CollectiveTimeout naming it (animegan/watchdog.py), and Ray Train
    restarts the worker group from the latest checkpoint as for a crash.

    `loop_config["report_every"]` (a sweep's trials) adds a report to Ray every that
    many steps, with the step's own metrics, beside the reports at checkpoints and
    evaluations; every report carries `images_seen`, the schedulers' clock.
    """
    import ray.train

    from animegan.preemption import StopWatcher
    from animegan.watchdog import StepWatchdog

    config = TrainConfig.from_dict(loop_config["config"])
    with StepWatchdog(config.collective_timeout, ray.train.get_context().get_world_rank()) as watchdog, \
            StopWatcher(loop_config.get("stop_notice")) as stop_watcher:
        _train(loop_config, watchdog, stop_watcher)


def _train(loop_config: dict[str, Any], watchdog, stop_watcher) -> None:
    from animegan.startup import StartupClock

    clock = StartupClock(loop_config.get("startup"))
    clock.mark("worker start")
    import ray.train
    import tensorflow as tf
    from ray.train.collective import broadcast_from_rank_zero

    config = TrainConfig.from_dict(loop_config["config"])
    layout = RunLayout(loop_config["workdir"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    is_chief = rank == 0
    _configure_worker(config)
    # The strategy must exist before any other TensorFlow op runs in this process.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    clock.mark("tensorflow import")

    from animegan import checkpoint as checkpoints
    from animegan import storage
    from animegan.data import pixel_cache
    from animegan.data.decode import ImageLimits
    from animegan.data.index import DataIndex
    from animegan.data.pipeline import DataPosition, ReadStats, next_batch, to_uint8, training_dataset
    from animegan.data.sources import open_source
    from animegan.gan import STEP_METRICS, build_state, make_ema_statistics_refresher, make_train_step
    from animegan.grids import image_grid, save_png
    from animegan.metrics.during_training import TrainingEvaluation
    from animegan.preemption import PREEMPTED
    from animegan.retries import call_with_retries
    from animegan.sinks import ConsoleProgress, JsonlMetrics, MetricsSink

    # Rank 0 speaks for the job; credentials in URLs (--data https://user:pass@...) are redacted.
    say = (lambda message: print(storage.redact(str(message)))) if is_chief else (lambda *args, **kwargs: None)

    # --- state: build, then restore the newest valid checkpoint if there is one
    with strategy.scope():
        state = build_state(config)
    clock.mark("models")
    fixed_noise = np.random.default_rng([config.seed, 1]).standard_normal(
        (SAMPLE_GRID_SIZE, config.noise_dim)).astype(np.float32)
    start_step, epoch, skip_items = 0, 0, 0
    # Rank 0 fetches the checkpoint the driver chose (or a newer one this run wrote before a
    # restart) and every worker loads that one: workers listing storage on their own could
    # pick different ones and fall out of step.
    found = (checkpoints.fetch_latest(layout.checkpoints, log=say, expected=loop_config.get("resume_from"))
             if is_chief else None)
    latest = broadcast_from_rank_zero(found[0] if found else None)
    if latest is not None:
        local = found[1] if found else checkpoints.download(latest)
        try:
            with strategy.scope():
                info = checkpoints.restore(local, state, config, source=latest)
            fixed_noise = checkpoints.load_fixed_noise(local)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        start_step, epoch, skip_items = info.step, info.epoch, info.skip_items
        say(f"Resuming from {latest} at step {start_step}")
    clock.mark("checkpoint scan")

    # --- data: this worker's shard, from where the checkpoint left off
    index = DataIndex.load(layout.data_index, source=config.data)
    source = open_source(index.source, max_item_bytes=config.max_image_bytes)
    per_epoch = steps_per_epoch(len(index.items), config)
    if latest is None:
        epoch, skip_items = 0, 0
    stats = ReadStats()
    # Decode once: later epochs read this worker's pixels, not files; rebuilt lazily after a resume.
    limits = ImageLimits.of(config)
    cache = pixel_cache.cache_for(source, index.items, limits, config.cache_memory, context.get_local_world_size())

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return training_dataset(
            source, index.items,
            batch_size=input_context.get_per_replica_batch_size(config.batch_size),
            rank=rank, world_size=world_size, seed=config.seed,
            position=DataPosition(epoch, skip_items), stats=stats, limits=limits, cache=cache,
        )

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(state, config, strategy)
    agree_to_stop = make_stop_agreement(strategy)
    refresh_ema_statistics = make_ema_statistics_refresher(state, config)
    ema_ready_at = -1

    def ema_ready(step: int) -> None:
        # Before the EMA generator is sampled, saved, evaluated or exported: once per step, on every worker.
        nonlocal ema_ready_at
        if ema_ready_at != step:
            refresh_ema_statistics()
            ema_ready_at = step
    clock.mark("dataset")
    # None unless --eval-every; rank 0 evaluates, every worker reports at the same steps.
    evaluation = TrainingEvaluation.create(config, layout, index, is_chief, log=say, resume_step=start_step)

    sink = MetricsSink([])
    if is_chief:
        sink = MetricsSink([JsonlMetrics(layout.metrics, resume_step=start_step),
                            ConsoleProgress(config.steps)])
        say(f"Training {config.steps} steps of {config.batch_size} images on {world_size} worker(s); "
            f"{len(index.items)} images, {per_epoch} steps per epoch")
        say(f"Samples: {layout.samples}  Checkpoints: {layout.checkpoints}  Metrics: {layout.metrics}")
        from animegan import tracking

        tracking.attach(sink, config, layout, loop_config.get("wandb_env", {}), start_step=start_step,
                        source=source, items=index.items, resumed_from=latest, log=say)
        clock.mark("metrics and W&B")

    def write_samples(step: int) -> None:
        # Every worker runs the generator (no collectives, but keeps workers in step); rank 0 writes.
        ema_ready(step)
        images = to_uint8(state.ema_generator(fixed_noise, training=False))
        if is_chief:
            grid = image_grid(images, columns=8)
            url = layout.sample(step)
            call_with_retries(lambda: save_png(url, grid), what=f"writing {url}", url=url)
            sink.log_image(step, "samples/ema", grid, caption=f"EMA generator on fixed noise, step {step}")

    def save_checkpoint(step: int, metrics: dict[str, Any]) -> None:
        # Every worker reports (Ray requires it); only rank 0 attaches files.
        ema_ready(step)
        name = checkpoints.checkpoint_dir_name(step)
        if not is_chief:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        epoch_now, skip_now = data_position(step, len(index.items), config)
        with checkpoints.written(state, step=step, epoch=epoch_now, skip_items=skip_now, fixed_noise=fixed_noise,
                                 config=config) as directory:
            sink.flush()

            def upload(_, dir_name: str):
                # In place of Ray's uploader: retried as reads are, and checked whole afterwards.
                url = storage.join(layout.checkpoints, dir_name)
                checkpoints.upload(directory, url, log=say)
                filesystem, path = storage.pyarrow_filesystem(url)
                return ray.train.Checkpoint(path=path, filesystem=filesystem)

            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=name, checkpoint_upload_fn=upload)
        # Stored and checked by now; W&B copies it (every --wandb-checkpoint-every-th) on its own thread.
        sink.log_checkpoint(step, storage.join(layout.checkpoints, name), final=metrics["status"] == "finished")

    # W&B and metrics.jsonl keep what was logged even when the loop fails.
    try:
        # --- the loop
        window: list[tf.Tensor] = []
        window_start = time.perf_counter()
        last_row: dict[str, Any] = {"status": "running", "step": start_step,
                                    "images_seen": images_seen(start_step, config)}
        report_every = int(loop_config.get("report_every") or 0)
        diverged = preempted = False
        for step in range(start_step + 1, config.steps + 1):
            with watchdog.step(step):
                window.append(train_step(next_batch(iterator, stats)))
            is_last = step == config.steps
            checkpoint_due = step % config.checkpoint_every == 0 or is_last
            if step == start_step + 1:
                window[-1].numpy()  # the end of the first step, tracing included
                clock.mark("first step")
                if is_chief:
                    clock.write(layout.startup, log=say)

            report_due = report_every > 0 and step % report_every == 0
            if step % config.log_every == 0 or checkpoint_due or report_due:
                # One host sync per logged step, not per step.
                means = tf.reduce_mean(tf.stack(window), axis=0).numpy()
                elapsed = time.perf_counter() - window_start
                row = {name: float(value) for name, value in zip(STEP_METRICS, means)}
                row["images_seen"] = images_seen(step, config)
                row["perf/images_per_sec"] = len(window) * config.batch_size / elapsed
                row["perf/step_time"] = elapsed / len(window)
                row["data/skipped"] = stats.skipped
                row["perf/peak_memory_mb"] = peak_memory_mb()  # this worker's; hostile images show here
                row["lr/generator"] = float(np.asarray(state.generator_optimizer.learning_rate))
                row["lr/discriminator"] = float(np.asarray(state.discriminator_optimizer.learning_rate))
                window, window_start = [], time.perf_counter()
                if not all(math.isfinite(value) for value in means):
                    # Every worker sees the same reduced values, so all stop here together.
                    say(f"Stopping: non-finite loss at step {step} ({row}); the latest checkpoint is kept as it was")
                    last_row = {**row, "status": "diverged", "step": step}
                    diverged = True
                    break
                # Asked to stop (SIGTERM to the driver, animegan/preemption.py)? One small all-reduce at this
                # step, where every worker syncs with the host anyway, gives all of them the same answer. It
                # waits for the other workers, so the watchdog watches it; at the last step there is no need.
                with watchdog.step(step):
                    preempted = agree_to_stop(stop_watcher.requested) and not is_last
                sink.log(step, row)
                last_row = {**row, "status": "running", "step": step}
            if preempted:
                # The step is done on every worker: checkpoint it and go, with no evaluation or samples
                # in the ~30 s a spot VM has left.
                say(f"Stopping after step {step} as asked (SIGTERM): checkpointing it")
                last_row = {**last_row, "status": PREEMPTED}
                save_checkpoint(step, {**last_row, **(evaluation.latest if evaluation else {})})
                break

            if step % config.sample_every == 0 or is_last:
                write_samples(step)
            eval_due = evaluation is not None and evaluation.due(step, is_last)
            if eval_due:
                eval_started = time.perf_counter()
                ema_ready(step)
                sink.log(step, evaluation.run(step, state.ema_generator))  # rank 0 evaluates; {} elsewhere
                window_start += time.perf_counter() - eval_started  # perf/* measures training, not evaluation
            # Reports carry the latest evaluation, so Tune finds eval/* in every result after the first one.
            reported = {**last_row, **(evaluation.latest if evaluation else {})}
            if checkpoint_due:
                save_checkpoint(step, {**reported, "status": "finished" if is_last else "running"})
            elif eval_due or report_due:
                # Every worker reports at these steps too: a barrier, the same count on every worker.
                ray.train.report(reported)

        if diverged:
            # The generator is past saving: its evaluation, too, is NaN now, so no sweep picks it as the best.
            scores = [name for name in (evaluation.latest if evaluation else {}) if name != "eval/step"]
            ray.train.report({**last_row, **{name: math.nan for name in scores}})
        elif start_step >= config.steps:
            say(f"Nothing to train: the checkpoint is at step {start_step} and --steps is {config.steps}")
            ray.train.report({**last_row, "status": "finished"})
        status = "diverged" if diverged else PREEMPTED if preempted else "finished"
        if is_chief:
            if status == "finished":
                ema_ready(max(start_step, config.steps))
                export_generator(state, config, layout, step=max(start_step, config.steps))
            # Ray's Result carries the metrics of the latest checkpoint, not of the last report,
            # so the outcome travels to the driver (and to the user) through the workdir.
            write_status(layout, status, max(start_step, config.steps) if status == "finished" else last_row["step"],
                         last_row)
        if stats.skipped:
            print(f"worker {rank}: skipped {stats.skipped} unreadable image(s), e.g. {'; '.join(stats.examples)}")
        sink.log_summary({"status": status, "step": last_row["step"]})
    finally:
        sink.close()


def make_stop_agreement(strategy):
    """A function every worker calls at the same steps: True on all of them when any one was asked to stop.

    One small all-reduce of the workers' flags, so that all stop at the same step (they run the same
    collective operations, and a worker that stopped alone would leave the others waiting in the next).
    """
    import tensorflow as tf

    @tf.function(autograph=False)
    def requests(flag: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda value: value, args=(flag,)), axis=None)

    return lambda requested: float(requests(tf.constant(1.0 if requested else 0.0)).numpy()) > 0


def write_status(layout: RunLayout, status: str, step: int, metrics: dict[str, Any]) -> None:
    import json

    from animegan import storage

    from animegan.retries import call_with_retries

    document = {"status": status, "step": step, "metrics": {key: value for key, value in metrics.items()
                                                             if key not in {"status", "step"}}}
    text = json.dumps(document, indent=2, allow_nan=True) + "\n"
    call_with_retries(lambda: storage.write_text(layout.status, text), what=f"writing {layout.status}",
                      url=layout.status)


def export_generator(state, config: TrainConfig, layout: RunLayout, step: int) -> None:
    """Saves the EMA generator as a plain Keras model (no distribution state) to the workdir."""
    import json

    from animegan import storage
    from animegan.models import build_generator
    from animegan.precision import dtype_policy
    from animegan.retries import call_with_retries

    # float32 whatever the training precision: the file then runs, with the same results, on any CPU.
    with dtype_policy("float32"):
        plain = build_generator(config)
    plain.set_weights(state.ema_generator.get_weights())
    directory = tempfile.mkdtemp(prefix="animegan-export-")
    try:
        local = os.path.join(directory, "generator.keras")
        plain.save(local)
        call_with_retries(lambda: storage.upload_file(local, layout.generator), what=f"uploading {layout.generator}",
                          url=layout.generator)
        info = json.dumps({"step": step, "config": storage.redacted(config.to_dict())})
        call_with_retries(lambda: storage.write_text(layout.generator_info, info),
                          what=f"writing {layout.generator_info}", url=layout.generator_info)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"Exported the EMA generator (step {step}) to {layout.generator}")
