"""Where the benchmarks find the real faces zip, as tests/conftest.py does.

$ANIMEGAN_REAL_FACES, else shared/data/anime-faces-64.zip beside the checkout, or
beside the folder of worktrees; the first candidate when none exists, so that a
script's message names where the file was expected.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = [folder / "shared" / "data" / "anime-faces-64.zip" for folder in (REPO.parent, REPO.parent.parent)]


def real_faces_path() -> Path:
    if os.environ.get("ANIMEGAN_REAL_FACES"):
        return Path(os.environ["ANIMEGAN_REAL_FACES"])
    return next((path for path in CANDIDATES if path.exists()), CANDIDATES[0])
