"""Print pyproject.toml's requirements one a line, for `pip install -r`: cluster/Dockerfile's dependency layer.

    python cluster/pyproject_requirements.py pyproject.toml gpu > requirements.txt

It prints the [project] dependencies, then those of each extra named after the file.
The image installs them before animegan's own code is copied in, so a code change
rebuilds only the small layers after them; reading them from pyproject.toml, not from
a second list, keeps the image's packages and pins those of `pip install animegan[gpu]`.

Standard library only (tomllib, Python 3.11+): it runs before anything is installed.
Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Sequence


def requirements(pyproject_text: str, extras: Sequence[str]) -> list[str]:
    """The dependencies of the [project] table, then those of `extras`, as written there."""
    try:
        project = tomllib.loads(pyproject_text)["project"]
        dependencies = list(project["dependencies"])
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"not valid TOML ({error})") from None
    except KeyError as missing:
        raise ValueError(f"no {missing.args[0]} in its [project] table") from None
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"no extra named {', '.join(unknown)} (it has: {', '.join(sorted(optional)) or 'none'})")
    for extra in extras:
        dependencies += [requirement for requirement in optional[extra] if requirement not in dependencies]
    return dependencies


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: pyproject_requirements.py PYPROJECT_TOML [EXTRA ...]", file=sys.stderr)
        return 2
    path, extras = Path(argv[0]), argv[1:]
    try:
        lines = requirements(path.read_text(), extras)
    except (OSError, ValueError) as error:
        print(f"pyproject_requirements: {path}: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
