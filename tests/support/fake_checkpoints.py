"""Checkpoint folders with arbitrary files, for tests of what is checked before a checkpoint is used.

They are laid out as animegan.checkpoint writes them (state.json listing each file's size and
SHA-256) but hold no model: choosing, fetching and verifying a checkpoint never parse its files.
"""

from __future__ import annotations

import hashlib
import json

from animegan import storage


def write_checkpoint_files(url: str, step: int, files: dict[str, bytes], listed: dict[str, bytes] | None = None):
    """A checkpoint folder holding `files`, whose state.json lists `listed` (default: the same files)."""
    listed = files if listed is None else listed
    for name, data in files.items():
        storage.write_bytes(storage.join(url, name), data)
    document = {"format": 1, "step": step, "epoch": 0, "skip_items": 0, "model": {}, "config": {},
                "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                          for name, data in listed.items()}}
    storage.write_text(storage.join(url, "state.json"), json.dumps(document))
    return url
