"""The one container image of the cluster configs: print it, or set it in all of them at once.

    python3 cluster/image.py                  # prints it; fails if the configs disagree
    python3 cluster/image.py set us-docker.pkg.dev/PROJECT/animegan/animegan:2026-12-01

cluster/Dockerfile builds the image; cluster/gcp.yaml and the cluster/kuberay/ files that
start pods run it. Each of those files names it once, on the line that defines the YAML
anchor &animegan_image; its other image fields are the alias *animegan_image. So `ray up`
and `kubectl apply` read the files as they are (no rendering step whose output could go
stale or be applied by mistake in its template's place), and `set` rewrites exactly those
lines, plus gcp.yaml's registry login, which needs the registry's host. A reference must
name a version (a tag other than `latest`, or a digest): a node that pulls again must get
the same image as the others.

Standard library only. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence

CLUSTER = Path(__file__).resolve().parent
# Every config that starts nodes or pods; tests/test_cluster_configs.py checks that none is missing.
CONFIGS = ("gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-train-own-cluster.yaml")
_ANCHOR = re.compile(r"^(?P<before>[ \t-]*[\w-]+:[ \t]+&animegan_image[ \t]+)(?P<image>\S+)", re.MULTILINE)
# The Compute Engine nodes log in to the image's registry with their service account before pulling.
_LOGIN = re.compile(r"(?P<before>gcloud auth configure-docker[ \t]+)(?P<host>[\w.:-]+)")
_REFERENCE = re.compile(r"(?P<name>[a-z0-9][a-z0-9._-]*(?::[0-9]+(?=/))?(?:/[a-z0-9][a-z0-9._-]*)*)"
                        r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?")


def check_reference(image: str) -> str:
    """`image` if it is a full image reference with a version; else a ValueError saying what is wrong."""
    match = _REFERENCE.fullmatch(image)
    if not match:
        raise ValueError(f"{image!r} is not an image reference (REGISTRY/PATH/NAME:TAG, e.g. "
                         f"us-docker.pkg.dev/PROJECT/animegan/animegan:2026-12-01)")
    if not match["tag"] and not match["digest"]:
        raise ValueError(f"{image} names no version: add a tag (:2026-12-01) or a digest (@sha256:...)")
    if match["tag"] == "latest" and not match["digest"]:
        raise ValueError(f"{image}: `latest` changes under a running cluster; tag the image with a version")
    return image


def registry_host(image: str) -> str:
    """The registry an image is pulled from (Docker's rule: a first part with a dot or a port is a host)."""
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"


def images_in(text: str) -> list[str]:
    return [match["image"] for match in _ANCHOR.finditer(text)]


def current(cluster: Path = CLUSTER) -> str:
    """The image the configs name; a ValueError when one lacks the anchor or they disagree."""
    named = {}
    for config in CONFIGS:
        found = images_in((cluster / config).read_text())
        if len(found) != 1:
            raise ValueError(f"cluster/{config} must define &animegan_image once, found {len(found)}")
        named[config] = found[0]
    if len(set(named.values())) != 1:
        listing = ", ".join(f"cluster/{config}: {image}" for config, image in named.items())
        raise ValueError(f"the cluster configs name different images ({listing}); run `python3 cluster/image.py "
                         f"set IMAGE` to name one")
    return named[CONFIGS[0]]


def set_image(image: str, cluster: Path = CLUSTER) -> list[Path]:
    """Writes `image` into every config (and the registry login of gcp.yaml); the files changed."""
    check_reference(image)
    current(cluster)  # every file has its anchor before any is written
    changed = []
    for config in CONFIGS:
        path = cluster / config
        text = path.read_text()
        updated = _ANCHOR.sub(lambda match: match["before"] + image, text)
        updated = _LOGIN.sub(lambda match: match["before"] + registry_host(image), updated)
        if updated != text:
            path.write_text(updated)
            changed.append(path)
    return changed


def main(argv: Sequence[str]) -> int:
    try:
        if not argv:
            print(current())
            return 0
        if argv[0] == "set" and len(argv) == 2:
            changed = set_image(argv[1])
            names = ", ".join(str(path.relative_to(CLUSTER.parent)) for path in changed)
            print(f"{argv[1]} set in {names or 'no file (they already named it)'}", file=sys.stderr)
            return 0
    except ValueError as error:
        print(f"image.py: {error}", file=sys.stderr)
        return 2
    print("usage: image.py [set IMAGE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
