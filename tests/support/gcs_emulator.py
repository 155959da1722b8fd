"""A real GCS-compatible server (the `gcp-storage-emulator` package) on 127.0.0.1.

It keeps its objects on disk, so it can be stopped in the middle of a test and
started again with its buckets intact. gcsfs reaches it through
STORAGE_EMULATOR_HOST, which conftest sets before anything imports gcsfs.

One change makes it behave as Cloud Storage does where the emulator does not:
an upload with `ifGenerationMatch` (gcsfs's exclusive create, mode="create",
sends ifGenerationMatch=0) is refused with 412 unless the object's generation
matches (0: the object must not exist). The emulator ignores the parameter, so
two writers that both create "only if absent" would both win.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class GCSEmulator:
    def __init__(self, port: int, data_dir: Path):
        self.port = port
        self.data_dir = data_dir
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"gcs-emulator-{port}.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", __name__, "-d", str(self.data_dir), "start", "--host", "127.0.0.1",
                "--port", str(self.port), "-q"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=self.environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the GCS emulator exited at start; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the GCS emulator did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def make_bucket(self, name: str) -> str:
        """Creates a bucket (idempotent) and returns its gs:// URL."""
        import fsspec

        fs = fsspec.filesystem("gs")
        if not fs.exists(name):
            fs.mkdir(name)
        fs.invalidate_cache()
        return f"gs://{name}"


def honour_preconditions() -> None:
    """Makes the emulator's uploads check `ifGenerationMatch` as Cloud Storage does (412 on a mismatch)."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    # The server handles requests on several threads: the check and the write must be one step.
    lock = threading.Lock()

    def checked(upload, name_of):
        def handler(request, response, storage):
            wanted = request.query.get("ifGenerationMatch")
            if not wanted:
                return upload(request, response, storage)
            with lock:
                try:
                    current = str(storage.get_file_obj(request.params["bucket_name"], name_of(request))["generation"])
                except NotFound:
                    current = "0"
                if current != wanted[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                             "specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}})
                    return None
                return upload(request, response, storage)
        return handler

    objects._media_upload = checked(objects._media_upload, lambda request: request.query["name"][0])
    objects._multipart_upload = checked(
        objects._multipart_upload,
        lambda request: request.query["name"][0] if "name" in request.query else request.data["meta"].get("name"))


if __name__ == "__main__":
    honour_preconditions()
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
