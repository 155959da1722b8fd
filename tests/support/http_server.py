"""A real HTTP server on 127.0.0.1 that serves one folder behind basic auth, with range requests.

fsspec reads a zip archive over HTTP in ranges, and a URL can carry its own credentials
(https://user:password@host/...), which the server checks: a listing that succeeds proves the
credentials were used, wherever else they must not appear.
"""

from __future__ import annotations

import base64
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    expected_authorization = ""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == self.expected_authorization:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="faces"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_HEAD(self) -> None:
        if self._authorized():
            super().do_HEAD()

    def do_GET(self) -> None:
        if not self._authorized():
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[start:end + 1])


class AuthenticatedFolderServer:
    """Serves `folder` at http://127.0.0.1:<port>/ to requests with the given user and password."""

    def __init__(self, folder: Path, user: str, password: str):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        handler = type("Handler", (_Handler,), {"expected_authorization": f"Basic {token}"})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "AuthenticatedFolderServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
