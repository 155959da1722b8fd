"""W&B artifacts of a run: the data pack it reads, its checkpoints and its exported generator.

They are built and logged on rank 0's W&B thread (animegan/wandb_writer.py) and nowhere
else, so a bucket listing or an upload never holds up a training step, and a failure is
a warning in the log, never a failed run.

- The pack (`animegan data pack`'s output, type `dataset`) is a reference artifact: W&B
  records each of its files' URL, size and checksum (a gs:// object's ETag; a local
  file's MD5), and nothing is copied. A local pack is a `file://` reference too, as W&B
  recommends for data that stays where it is (its "track external files" guide:
  buckets, and filesystems such as an NFS share): packs exist for data sets too large
  to read image by image, and a file artifact would upload every new version of one
  from the machine that trains. Packs elsewhere (http, s3) get no artifact: a signed
  URL would carry its credentials into W&B.
- Checkpoints (`--wandb-checkpoint-every K`, type `checkpoint`) are copies: the
  artifact is what outlives `--keep-checkpoints`. Every K-th checkpoint (numbered by
  step / --checkpoint-every, so a resumed run counts on) and the last one.
- A run's inputs: online, `run.use_artifact` logs the pack (and, after a resume, the
  checkpoint it continued from) and marks it as the run's input, so the run's page
  shows which data and which checkpoint it came from. W&B keeps one version per
  digest, so the same pack used by a sweep's trials is one version. Offline, W&B
  refuses use_artifact (it asks the server), so the artifact is logged as the run's
  output instead and still shows on the run's page after `wandb sync`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

from animegan import storage
from animegan.config import TrainConfig, model_signature
from animegan.workdir import RunLayout

PACK_TYPE = "dataset"
CHECKPOINT_TYPE = "checkpoint"


def publish(run, artifact, aliases: list[str], *, as_input: bool) -> None:
    """Logs `artifact`; an input is marked as used by the run where W&B can (online)."""
    if as_input and not run.offline:
        run.use_artifact(artifact, aliases=aliases)
    else:
        run.log_artifact(artifact, aliases=aliases)


def artifact_name(prefix: str, text: str) -> str:
    """A valid artifact name: W&B takes letters, digits, '-', '_' and '.' only."""
    return f"{prefix}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', text).strip('-.') or 'data'}"[:128]


def pack_artifact(source):
    """The reference artifact of a PackedSource; ValueError for a pack where W&B cannot refer to it."""
    import wandb

    folder = storage.absolute(source.folder.rstrip("/"))
    protocol, _ = storage.split_protocol(folder)
    if storage.is_local(folder):
        uri = "file://" + folder
    elif protocol in ("gs", "gcs"):
        uri = "gs://" + folder.split("://", 1)[1]
    else:
        raise ValueError(f"W&B artifacts refer to gs:// and local packs only, not {storage.redact(folder)}")
    manifest = source.manifest
    parameters = manifest.parameters
    artifact = wandb.Artifact(
        artifact_name("pack", folder.rsplit("/", 1)[-1]), type=PACK_TYPE,
        description="animegan data pack (shards, their records and manifest.json), referred to where it lives",
        metadata={"url": storage.redact(folder), "images": manifest.images, "shards": len(manifest.shards),
                  "decoded": parameters.decoded, "source": storage.redact(parameters.source),
                  "seed": parameters.seed, "shard_bytes": parameters.shard_bytes})
    # Each shard, its record, the manifest: W&B lists at most max_objects under the prefix.
    artifact.add_reference(uri.rstrip("/") + "/", max_objects=2 * len(manifest.shards) + 16)
    return artifact


def checkpoint_wanted(step: int, checkpoint_every: int, every: int, final: bool) -> bool:
    """Whether the checkpoint at `step` becomes an artifact under --wandb-checkpoint-every `every` (0: none)."""
    if every <= 0:
        return False
    return final or (step % checkpoint_every == 0 and (step // checkpoint_every) % every == 0)


def checkpoint_artifact(url: str, run_id: str) -> tuple[Any, list[str], str | None]:
    """(artifact, aliases, temporary folder to remove once logged) of the checkpoint at `url`.

    A gs:// checkpoint is fetched and verified against its SHA-256 sums first; a local one is
    added in place. Either way W&B copies the files into its staging area when they are added.
    """
    import wandb

    from animegan import checkpoint as checkpoints

    local, temporary = storage.absolute(url), None
    if not storage.is_local(url):
        local = temporary = checkpoints.download(url)
    try:
        with open(os.path.join(local, checkpoints.STATE_FILE), encoding="utf-8") as file:
            state = json.load(file)
        step = state["step"]
        artifact = wandb.Artifact(
            f"checkpoint-{run_id}", type=CHECKPOINT_TYPE,
            description="animegan training checkpoint: both networks, the EMA generator, optimizer slots, "
                        "fixed noise and state.json (resume with --workdir holding it under checkpoints/)",
            metadata={"step": step, "epoch": state["epoch"], "skip_items": state["skip_items"],
                      "url": storage.redact(url), **state.get("model", {})})
        artifact.add_dir(local)
    except BaseException:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return artifact, ["latest", f"step-{step}"], temporary


def generator_artifact(layout: RunLayout, run_id: str) -> tuple[Any, list[str], str | None] | None:
    """(artifact, aliases, temporary folder) of the exported EMA generator, or None when there is none."""
    import wandb

    if not storage.exists(layout.generator):
        return None
    info = json.loads(storage.read_text(layout.generator_info)) if storage.exists(layout.generator_info) else {}
    config = info.get("config", {})
    signature = model_signature(TrainConfig.from_saved(config)) if config else {}
    artifact = wandb.Artifact(f"generator-{run_id}", type="model",
                              description="EMA generator of an animegan DCGAN run (Keras 3 .keras file)",
                              metadata={"step": info.get("step"), **signature})
    local, temporary = layout.generator, None
    if not storage.is_local(local):
        temporary = tempfile.mkdtemp(prefix="animegan-wandb-model-")
        local = os.path.join(temporary, "generator.keras")
        with open(local, "wb") as file:
            file.write(storage.read_bytes(layout.generator))
    try:
        artifact.add_file(local, name="generator.keras")
    except BaseException:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    aliases = ["latest"] + ([f"step-{info['step']}"] if info.get("step") is not None else [])
    return artifact, aliases, temporary
