"""What every benchmark's JSON records the same way: the CPU's vector flags, and the file itself.

Figures differ several-fold between machine kinds (AVX2 only, or AVX-512 with
AMX), so every result names the extensions of the CPU it was measured on.
"""

from __future__ import annotations

import json
import os


def vector_flags() -> list[str]:
    """The CPU's vector and matrix extensions (AVX2, AVX-512, AMX...): figures differ several-fold between kinds."""
    try:
        with open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(flag for flag in flags if flag.startswith(("avx", "amx", "fma")))


def write_json(path: str | os.PathLike, document: dict) -> None:
    """The result as indented JSON at `path` (its folder made if missing), and a line saying where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        file.write(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
