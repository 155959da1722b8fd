"""Copy a secret from Google Secret Manager into a file on this node: cluster/gcp.yaml's setup runs it.

    python cluster/fetch_secret.py wandb-api-key ~/.animegan/wandb-api-key
    python cluster/fetch_secret.py --required ray-auth-token ~/.ray/auth_token

It asks the node's metadata server for the node's service-account token and its
project, reads the secret's latest version through Secret Manager's REST API, and
writes it to the file (mode 600, replaced atomically). ~/.animegan_env then exports
it as WANDB_API_KEY before `ray start`, so Ray's processes on the node, and every
job's driver and workers, inherit it; it never travels with a job.

Standard library only: it runs in any Python, before anything else is set up.
Setup must not fail for a missing W&B key (W&B then logs offline), so every failure is
one line on stderr and exit status 0; with --required (Ray's token, without which the
node's Ray cannot start) the line says so and the exit status is 1, stopping the setup.
GCE_METADATA_HOST and SECRET_MANAGER_ENDPOINT override the endpoints (as Google's
libraries allow), for tests.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_SECONDS = 10


def _get(url: str, headers: dict[str, str]) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS) as response:
        return response.read()


def fetch(name: str) -> bytes:
    """The latest version of secret `name` in this node's project."""
    metadata = "http://" + os.environ.get("GCE_METADATA_HOST", "metadata.google.internal") + "/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}
    token = json.loads(_get(f"{metadata}/instance/service-accounts/default/token", flavor))["access_token"]
    project = _get(f"{metadata}/project/project-id", flavor).decode("ascii").strip()
    endpoint = os.environ.get("SECRET_MANAGER_ENDPOINT", "https://secretmanager.googleapis.com").rstrip("/")
    answer = json.loads(_get(f"{endpoint}/v1/projects/{project}/secrets/{name}/versions/latest:access",
                             {"Authorization": f"Bearer {token}"}))
    return base64.b64decode(answer["payload"]["data"])


def write_private(path: Path, data: bytes) -> None:
    """Writes `data` readable by this user only, replacing `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mode 600
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.strip())
        os.replace(temporary, path)
    except BaseException:
        os.remove(temporary)
        raise


def main(argv: list[str]) -> int:
    required = argv[:1] == ["--required"]
    argv = argv[1:] if required else argv
    if len(argv) != 2 or argv[0].startswith("-"):
        print("usage: fetch_secret.py [--required] SECRET_NAME FILE", file=sys.stderr)
        return 2
    name, path = argv[0], Path(argv[1]).expanduser()
    try:
        data = fetch(name)
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}" + (" (no such secret)" if error.code == 404 else
                                         " (give the node's service account roles/secretmanager.secretAccessor)"
                                         if error.code == 403 else "")
    except (OSError, ValueError, KeyError) as error:
        reason = f"{type(error).__name__}: {error}"
    else:
        write_private(path, data)
        print(f"fetch_secret: {name} from Secret Manager is in {path}")
        return 0
    if required:
        print(f"fetch_secret: {name} not read from Secret Manager ({reason}); it is required, so this node's "
              f"setup stops here (README, \"Run on a cluster\", says how to create it)", file=sys.stderr)
        return 1
    print(f"fetch_secret: {name} not read from Secret Manager ({reason}); jobs on this node log W&B offline",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
