"""Generating many images on Ray workers: deterministic, resumable, to any fsspec URL.

`generate_many(request)` writes `count` images and a manifest into an output
folder (layout in generation_output.py).

The work is cut into chunks aligned to the generator's batches, and the pending
chunks are split into K contiguous runs, one per worker, so worker k writes its
own contiguous range of images. A worker (a Ray actor, or this process for a
single CPU worker) loads the generator once, and every worker loads the one
generator the driver picked, even if training writes a newer one meanwhile.

Resuming: one listing of the folder tells which files are complete; only the
others are generated.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from animegan import storage
from animegan.generation import GeneratorSource, find_generator, generate_images, load_generator_from
from animegan.generation_output import (
    FORMATS,
    MANIFEST_NAME,
    OutputNaming,
    check_same_job,
    complete_files,
    new_manifest,
)

# Images per call to a worker: the grain of progress reports, of load balancing and of what an
# interruption can lose. Rounded to whole generator batches so no batch is computed twice.
CHUNK_IMAGES = 256
PROGRESS_SECONDS = 5.0
# Concurrent uploads per worker to object storage; the single-threaded GCS emulator stalls at 8.
REMOTE_WRITE_THREADS = 4


@dataclass(frozen=True)
class GenerationRequest:
    checkpoint: str  # the training run's workdir
    out: str  # folder URL for the images and manifest.json
    count: int
    seed: int = 0
    image_format: str = "png"
    batch_size: int = 64
    images_per_shard: int = 1000
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    overwrite: bool = False  # regenerate everything, even over another job's files
    # None: Ray when there are several workers, GPUs per worker or a cluster address; one
    # CPU worker otherwise runs in this process, sparing Ray's start-up.
    use_ray: bool | None = None

    def validate(self) -> "GenerationRequest":
        for flag, value in [("--num", self.count), ("--batch-size", self.batch_size), ("--workers", self.workers),
                            ("--images-per-shard", self.images_per_shard)]:
            if value <= 0:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.seed < 0:
            raise ValueError(f"--seed must not be negative, got {self.seed}")
        if self.image_format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.image_format!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must not be negative, got {self.gpus_per_worker}")
        return self


@dataclass(frozen=True)
class WorkerJob:
    """What every worker needs besides the generator, sent to Ray actors as a plain value."""

    out: str
    seed: int
    batch_size: int
    naming: OutputNaming


class GenerationWorker:
    """Loads the generator once, then turns lists of output file numbers into written files.

    Runs as a Ray actor, or directly in the driver when there is one worker.
    """

    def __init__(self, source: GeneratorSource, job: WorkerJob, threads: int = 0):
        if threads:
            import tensorflow as tf

            # TensorFlow ignores the OMP_NUM_THREADS Ray sets: without this, K workers on
            # one machine would each start a thread per core and fight over them.
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
            # By default TensorFlow takes all of a GPU's memory; workers given a fraction
            # of one GPU (--gpus-per-worker 0.5) must leave room for each other.
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        self.job = job
        self.generator = load_generator_from(source)

    def ready(self) -> bool:
        return True

    def write_files(self, file_numbers: Sequence[int]) -> dict[str, float]:
        """Generates, encodes and writes the given files; returns counts and seconds per phase."""
        from animegan.grids import encode_image
        from animegan.image_shards import pack_shard

        naming = self.job.naming
        indices = [index for number in file_numbers for index in naming.image_range(number)]
        started = time.perf_counter()
        images = dict(zip(indices, generate_images(self.generator, self.job.seed, indices, self.job.batch_size)))
        generated = time.perf_counter()
        files = {}
        for number in file_numbers:
            if naming.sharded:
                files[naming.file_name(number)] = pack_shard(
                    (naming.image_name(index), encode_image(images[index], "png"))
                    for index in naming.image_range(number))
            else:
                files[naming.file_name(number)] = encode_image(images[number], naming.image_format)
        encoded = time.perf_counter()
        _write_all(self.job.out, files)
        written = time.perf_counter()
        return {"images": len(indices), "files": len(files), "bytes": sum(map(len, files.values())),
                "generator_seconds": generated - started, "encode_seconds": encoded - generated,
                "write_seconds": written - encoded}


def _write_all(out: str, files: dict[str, bytes]) -> None:
    if storage.is_local(out):
        for name, data in files.items():
            storage.write_bytes(storage.join(out, name), data)
        return
    # One request at a time would leave a worker waiting on network round trips.
    with ThreadPoolExecutor(REMOTE_WRITE_THREADS) as pool:
        list(pool.map(lambda item: storage.write_bytes(storage.join(out, item[0]), item[1]), files.items()))


@dataclass
class GenerationSummary:
    out: str
    count: int
    generator_source: str
    generator_step: int
    workers: int
    generated_images: int = 0  # this run; the rest were already there
    existing_files: int = 0
    startup_seconds: float = 0.0  # starting workers and loading the generator
    generate_seconds: float = 0.0  # wall time of the generation itself, after start-up
    phase_seconds: dict[str, float] = field(default_factory=lambda: {"generator": 0.0, "encode": 0.0, "write": 0.0})
    bytes_written: int = 0

    @property
    def images_per_second(self) -> float:
        return self.generated_images / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def add(self, stats: dict[str, float]) -> None:
        self.generated_images += int(stats["images"])
        self.bytes_written += int(stats["bytes"])
        for phase in self.phase_seconds:
            self.phase_seconds[phase] += stats[f"{phase}_seconds"]


class _Progress:
    """A progress line at most every PROGRESS_SECONDS, and one at the end."""

    def __init__(self, summary: GenerationSummary, total_images: int, log: Callable[[str], None]):
        self.summary, self.total_images, self.log = summary, total_images, log
        self.start()

    def start(self) -> None:
        """Starts the clock once the workers are ready, so the rate is the generation's own."""
        self.started = self.last_line = time.monotonic()

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_line < PROGRESS_SECONDS:
            return
        self.last_line = now
        done = self.summary.generated_images
        rate = done / max(now - self.started, 1e-9)
        line = f"generate: {done}/{self.total_images} images ({100 * done / max(self.total_images, 1):.0f}%)"
        line += f" | {rate:.1f} img/s"
        if not final and rate > 0:
            line += f" | eta {(self.total_images - done) / rate:.0f} s"
        self.log(line)


def generate_many(request: GenerationRequest, address: str | None = None,
                  log: Callable[[str], None] = print) -> GenerationSummary:
    """Writes request.count images to request.out, skipping the files already written there."""
    request.validate()
    out = storage.absolute(request.out)
    source = find_generator(request.checkpoint)
    naming = OutputNaming(request.count, request.image_format, request.images_per_shard)
    manifest = new_manifest(request.checkpoint, request.seed, request.batch_size, source, naming)
    existing = complete_files(out)
    if not request.overwrite:
        check_same_job(out, existing, manifest, naming)
    storage.makedirs(out)
    storage.write_text(storage.join(out, MANIFEST_NAME), json.dumps(manifest, indent=2))

    pending = [number for number in range(naming.num_files)
               if request.overwrite or naming.file_name(number) not in existing]
    summary = GenerationSummary(out, request.count, source.url, source.step, request.workers,
                                existing_files=naming.num_files - len(pending))
    pending_images = sum(len(naming.image_range(number)) for number in pending)
    if summary.existing_files:
        log(f"{summary.existing_files} of {naming.num_files} files are already in {out}; "
            f"generating the other {pending_images} images")
    job = WorkerJob(out, request.seed, request.batch_size, naming)
    chunks = plan_chunks(pending, naming, request.batch_size, request.workers)
    progress = _Progress(summary, pending_images, log)
    use_ray = request.use_ray
    if use_ray is None:
        use_ray = request.workers > 1 or request.gpus_per_worker > 0 or bool(address)
    if chunks and not use_ray:
        _run_in_process(source, job, chunks, summary, progress)
    elif chunks:
        _run_on_ray(source, job, split_contiguous(chunks, naming, request.workers), request, address,
                    summary, progress, log)
    manifest.update(status="complete", workers=request.workers, generated_this_run=summary.generated_images,
                    seconds=round(summary.generate_seconds, 3))
    storage.write_text(storage.join(out, MANIFEST_NAME), json.dumps(manifest, indent=2))
    return summary


def plan_chunks(pending: list[int], naming: OutputNaming, batch_size: int, workers: int) -> list[list[int]]:
    """Pending file numbers grouped into calls: one shard, or whole aligned batches of images.

    Up to CHUNK_IMAGES images per call, fewer for small jobs so that every worker gets
    several calls and the split between workers stays even.
    """
    if naming.sharded:
        return [[number] for number in pending]
    batches_per_chunk = min(CHUNK_IMAGES // batch_size, math.ceil(len(pending) / (4 * workers * batch_size)))
    span = batch_size * max(1, batches_per_chunk)
    chunks: dict[int, list[int]] = {}
    for number in pending:
        chunks.setdefault(number // span, []).append(number)
    return list(chunks.values())


def split_contiguous(chunks: list[list[int]], naming: OutputNaming, parts: int) -> list[list[list[int]]]:
    """Consecutive runs of chunks with about equal numbers of images; empty runs dropped."""
    sizes = [sum(len(naming.image_range(number)) for number in chunk) for chunk in chunks]
    total = sum(sizes)
    runs: list[list[list[int]]] = [[] for _ in range(parts)]
    done = 0
    for chunk, size in zip(chunks, sizes):
        # By the chunk's middle, so a run ends at whichever chunk boundary is nearest its share.
        runs[min(parts - 1, (2 * done + size) * parts // (2 * total))].append(chunk)
        done += size
    return [run for run in runs if run]


def _run_in_process(source: GeneratorSource, job: WorkerJob, chunks: list[list[int]],
                    summary: GenerationSummary, progress: _Progress) -> None:
    started = time.monotonic()
    worker = GenerationWorker(source, job)
    summary.startup_seconds = time.monotonic() - started
    progress.start()
    for chunk in chunks:
        summary.add(worker.write_files(chunk))
        progress.report()
    summary.generate_seconds = time.monotonic() - progress.started
    progress.report(final=True)


def _run_on_ray(source: GeneratorSource, job: WorkerJob, runs: list[list[list[int]]], request: GenerationRequest,
                address: str | None, summary: GenerationSummary, progress: _Progress,
                log: Callable[[str], None]) -> None:
    import ray

    from animegan import cluster
    from animegan.config import TrainConfig

    started_ray = cluster.connect(address, log=log)
    actors = []
    try:
        cluster.check_resources(TrainConfig(workers=len(runs), cpus_per_worker=request.cpus_per_worker,
                                            gpus_per_worker=request.gpus_per_worker))
        started = time.monotonic()
        remote_worker = ray.remote(GenerationWorker).options(num_cpus=request.cpus_per_worker,
                                                             num_gpus=request.gpus_per_worker)
        threads = max(1, int(request.cpus_per_worker))
        actors = [remote_worker.remote(source, job, threads) for _ in runs]
        ray.get([actor.ready.remote() for actor in actors])
        summary.startup_seconds = time.monotonic() - started
        log(f"{len(actors)} workers ready after {summary.startup_seconds:.1f} s")

        progress.start()
        queues = [deque(run) for run in runs]
        in_flight = {}

        def submit(worker_number: int) -> None:
            if queues[worker_number]:
                chunk = queues[worker_number].popleft()
                in_flight[actors[worker_number].write_files.remote(chunk)] = worker_number

        # Two calls queued per actor, so the next is waiting the moment one finishes.
        for worker_number in range(len(actors)):
            submit(worker_number)
            submit(worker_number)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_SECONDS)
            for reference in done:
                worker_number = in_flight.pop(reference)
                summary.add(ray.get(reference))
                submit(worker_number)
            progress.report()
        summary.generate_seconds = time.monotonic() - progress.started
        progress.report(final=True)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
