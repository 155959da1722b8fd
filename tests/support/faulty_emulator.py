"""The real GCS emulator, made to crash in the middle of an upload: for storage-failure tests.

Run as a script, it starts `gcp-storage-emulator` with one change: when the Nth
object whose name contains CRASH_ON_UPLOAD arrives, the process exits at once,
before storing it and without answering, exactly as a server that dies mid-request.
The objects stored before stay on disk, so the real emulator started again on the
same port and data folder carries on from there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.gcs_emulator import GCSEmulator, honour_preconditions

CRASH_EXIT_CODE = 43
REPO = Path(__file__).resolve().parents[2]


class FaultyEmulator(GCSEmulator):
    """A GCSEmulator that crashes on the `count`-th upload of an object whose name contains `pattern`."""

    def __init__(self, port: int, data_dir: Path, pattern: str, count: int = 1):
        super().__init__(port, data_dir)
        self.pattern = pattern
        self.count = count

    def command(self) -> list[str]:
        return [sys.executable, "-m", __name__, "-d", str(self.data_dir), "start", "--host", "127.0.0.1",
                "--port", str(self.port), "-q"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "CRASH_ON_UPLOAD": self.pattern,
                "CRASH_ON_UPLOAD_COUNT": str(self.count)}

    def stored_objects(self, bucket_url: str, prefix: str) -> list[str]:
        """Names of the objects under `prefix` that the emulator has on disk (readable while it is down)."""
        from gcp_storage_emulator.settings import STORAGE_DIR

        folder = self.data_dir / STORAGE_DIR / bucket_url.removeprefix("gs://") / prefix
        return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def _crash_on_matching_upload() -> None:
    from gcp_storage_emulator import storage

    pattern = os.environ["CRASH_ON_UPLOAD"]
    remaining = [int(os.environ.get("CRASH_ON_UPLOAD_COUNT", "1"))]
    store = storage.Storage.create_file

    def create_file(self, bucket_name, file_name, *args, **kwargs):
        if pattern in file_name:
            remaining[0] -= 1
            if remaining[0] == 0:
                os._exit(CRASH_EXIT_CODE)
        return store(self, bucket_name, file_name, *args, **kwargs)

    storage.Storage.create_file = create_file


if __name__ == "__main__":
    honour_preconditions()
    _crash_on_matching_upload()
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
