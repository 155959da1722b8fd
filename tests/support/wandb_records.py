"""Reads a W&B run back from its `.wandb` file, with wandb's own protobuf definitions.

wandb 0.31 writes no history JSON for offline runs and has no public reader, so
this decodes the record stream directly: a 7-byte header (":W&B", magic 0xBEE1,
version), then LevelDB-log blocks of 32 KiB whose chunks (FULL, or FIRST,
MIDDLE..., LAST) carry CRC-32-checked, serialized `wandb_internal_pb2.Record`s.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
BLOCK_SIZE = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def record_payloads(path: Path) -> Iterator[bytes]:
    """The serialized records of a `.wandb` file, in order; stops at a torn tail."""
    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B record file")
    offset, pending = HEADER.size, b""
    while offset + CHUNK_HEADER.size <= len(data):
        room = BLOCK_SIZE - offset % BLOCK_SIZE
        if room < CHUNK_HEADER.size:  # a block's tail too small for a header is zero padding
            offset += room
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, offset)
        chunk = data[offset + CHUNK_HEADER.size:offset + CHUNK_HEADER.size + length]
        if kind == 0 or len(chunk) < length:
            return  # zero-filled or unfinished tail
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: bad checksum at byte {offset}")
        offset += CHUNK_HEADER.size + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


@dataclass
class WandbRun:
    """What a W&B run file holds, in the shapes a test wants."""

    path: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # define_metric's, by name (or glob)
    exit_code: int | None = None

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]


def _key(item) -> list[str]:
    return list(item.nested_key) or [item.key]


def _assign(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def read_run(path: Path) -> WandbRun:
    from wandb.proto import wandb_internal_pb2

    run = WandbRun(path=Path(path))
    for payload in record_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id, record.run.project
            run.name, run.group, run.tags = record.run.display_name, record.run.run_group, list(record.run.tags)
            for item in record.run.config.update:
                _assign(run.config, _key(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _assign(run.config, _key(item), json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _assign(row, _key(item), json.loads(item.value_json))
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _assign(run.summary, _key(item), json.loads(item.value_json))
        elif kind == "artifact":
            contents = record.artifact.manifest.contents
            run.artifacts.append({"name": record.artifact.name, "type": record.artifact.type,
                                  "aliases": list(record.artifact.aliases),
                                  "files": [entry.path for entry in contents],
                                  "refs": {entry.path: entry.ref for entry in contents if entry.ref},
                                  "metadata": json.loads(record.artifact.metadata or "{}")})
        elif kind == "metric":
            metric = record.metric
            summary = {name for name in ("min", "max", "mean", "best", "last", "none", "first")
                       if getattr(metric.summary, name)}
            run.metrics[metric.name or metric.glob_name] = {"step_metric": metric.step_metric, "summary": summary}
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def run_files(workdir: Path) -> list[Path]:
    """Every W&B run file written under a workdir (one per started session), oldest first."""
    return sorted(Path(workdir).glob("wandb/*run-*/run-*.wandb"))
