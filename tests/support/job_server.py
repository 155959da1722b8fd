"""A real HTTP server on 127.0.0.1 that answers the few calls of Ray's jobs API a submission makes, and records them.

Ray's own JobSubmissionClient talks to it as to a cluster's dashboard: the version check,
the working dir's upload, the submission, then status and logs until the job has ended.
Every request is recorded with its Authorization header and body, so a test can show which
token was sent and that it appears nowhere else. With `token` set, it answers as Ray's
token middleware does: 401 without an Authorization header, 403 with a wrong one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JOB_ID = "raysubmit_recorded"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, server_state: "RecordingJobServer", *args, **kwargs):
        self.state = server_state
        super().__init__(*args, **kwargs)

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        authorization = self.headers.get("Authorization")
        self.state.requests.append(Request(self.command, self.path, authorization, body))
        if self.state.token is not None and authorization != f"Bearer {self.state.token}":
            status, text = (401, "Unauthorized: Missing authentication token") if authorization is None else (
                403, "Forbidden: Invalid authentication token")
            return self._send(status, text.encode(), "text/plain")
        if self.command == "GET" and self.path == "/api/version":
            return self._json({"version": "4", "ray_version": "2.60.0", "ray_commit": "0" * 40,
                               "session_name": "recorded"})
        if self.path.startswith("/api/packages/"):
            # No package is there yet; an upload is taken as it is.
            return self._send(404 if self.command == "GET" else 200, b"", "text/plain")
        if self.command == "POST" and self.path == "/api/jobs/":
            return self._json({"job_id": JOB_ID, "submission_id": JOB_ID})
        if self.command == "GET" and self.path == f"/api/jobs/{JOB_ID}":
            return self._json({"type": "SUBMISSION", "job_id": None, "submission_id": JOB_ID,
                               "status": "SUCCEEDED", "entrypoint": "recorded", "message": "done"})
        if self.command == "GET" and self.path == f"/api/jobs/{JOB_ID}/logs":
            return self._json({"logs": "the job ran\n"})
        self._send(404, b"not found", "text/plain")

    do_GET = do_POST = do_PUT = _answer

    def _json(self, document: dict) -> None:
        self._send(200, json.dumps(document).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RecordingJobServer:
    """Serves the jobs API at `address` until `close()`; `requests` lists what it received."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def submitted(self) -> dict:
        """The body of the job submission: entry point, runtime env, metadata."""
        [submission] = [request for request in self.requests if request.method == "POST"]
        return json.loads(submission.body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
