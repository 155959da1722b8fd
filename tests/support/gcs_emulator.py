"""A real GCS-compatible server (the `gcp-storage-emulator` package) on 127.0.0.1.

It keeps its objects on disk, so it can be stopped in the middle of a test and
started again with its buckets intact. gcsfs reaches it through
STORAGE_EMULATOR_HOST, which conftest sets before anything imports gcsfs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


class GCSEmulator:
    def __init__(self, port: int, data_dir: Path):
        self.port = port
        self.data_dir = data_dir
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"gcs-emulator-{port}.log"

    def command(self) -> list[str]:
        executable = Path(sys.executable).with_name("gcp-storage-emulator")
        return [str(executable), "-d", str(self.data_dir), "start", "--host", "127.0.0.1",
                "--port", str(self.port), "-q"]

    def environment(self) -> dict[str, str]:
        return os.environ.copy()

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
