"""Retrying storage calls that fail transiently, with exponential backoff and jitter.

gcsfs already retries each HTTP request a few times (about 30 s in all) on
connection errors and HTTP 5xx/408/429. This layer sits above it: it rides out
longer outages (a restarted endpoint, a network blip between zones), covers
errors gcsfs does not retry (timeouts, a connection dropped mid-body), and
turns a failure that persists into one `StorageError` that names the URL.

Errors that retrying cannot fix (a missing object, a missing bucket, no
permission) are raised at once, so they are reported within seconds.
"""

from __future__ import annotations

import errno
import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP statuses that mean "try again later": timeout, throttling, server errors.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Network-level errno values that a later attempt can succeed after.
TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
                              errno.EPIPE, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH})


class StorageError(RuntimeError):
    """A storage operation that kept failing after every retry; the message names the URL."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url

    def __reduce__(self):
        # Crosses process boundaries (Ray, tf.data) with its URL intact.
        return StorageError, (str(self), self.url)


def _redact(text: str) -> str:
    from animegan.storage import redact  # storage imports fsspec: only when there is something to say

    return redact(text)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: delays grow geometrically up to `max_delay`."""

    attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0
    # Each delay is scaled by a random factor in [1 - jitter, 1 + jitter], so that
    # many workers hit by the same outage do not all come back in the same instant.
    jitter: float = 0.25

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"a retry policy needs at least 1 attempt, got {self.attempts}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid retry policy {self}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The pauses before the 2nd, 3rd, ... attempt (attempts - 1 of them)."""
        rng = rng or random.Random()
        delay = self.initial_delay
        for _ in range(self.attempts - 1):
            yield min(self.max_delay, delay) * rng.uniform(1 - self.jitter, 1 + self.jitter)
            delay *= self.multiplier


DEFAULT_POLICY = RetryPolicy()


@functools.cache
def _transient_classes() -> tuple[type, ...]:
    """Exception classes of the HTTP stacks under fsspec that mean a dropped or refused connection."""
    classes: list[type] = [ConnectionError, TimeoutError]
    try:
        import aiohttp

        classes += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    try:
        import requests

        classes += [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
    except ImportError:
        pass
    try:
        import google.auth.exceptions

        # Fetching a fresh access token from the metadata server can fail for a moment too.
        classes += [google.auth.exceptions.TransportError]
    except ImportError:
        pass
    return tuple(classes)


def http_status(error: BaseException) -> int | None:
    """The HTTP status an exception carries (gcsfs's HttpError.code, aiohttp's .status), if any."""
    for attribute in ("status", "code"):
        value = getattr(error, attribute, None)
        try:
            if value is not None and 100 <= int(value) <= 599:
                return int(value)
        except (TypeError, ValueError):
            continue
    return None


def is_transient(error: BaseException | None) -> bool:
    """True when the same call may succeed later: connection trouble, timeouts, HTTP 408/429/5xx."""
    if error is None or not isinstance(error, Exception):
        return False
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = http_status(error)
    if status is not None:
        return status in TRANSIENT_HTTP_STATUSES
    if type(error).__name__ == "ChecksumError":  # gcsfs: the body arrived damaged
        return True
    if isinstance(error, _transient_classes()):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def call_with_retries(
    function: Callable[[], T],
    *,
    what: str | Callable[[], str],
    url: str = "",
    policy: RetryPolicy = DEFAULT_POLICY,
    transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`function()`, retried with backoff while it fails transiently.

    `what` says what is being done ("reading gs://b/x"), for log lines and the
    final error; it may be a function, evaluated when needed, when the failing
    URL is only known then. A transient failure that outlasts the policy becomes
    a StorageError; any other error is raised unchanged at once.
    """
    started = time.monotonic()
    delays = policy.delays()
    attempt = 1
    while True:
        try:
            return function()
        except Exception as error:  # noqa: BLE001 (classified right here)
            if not transient(error):
                raise
            # Log lines and errors name the URL, never the credentials in it.
            description = _redact(what() if callable(what) else what)
            delay = next(delays, None)
            if delay is None:
                elapsed = time.monotonic() - started
                raise StorageError(
                    f"{description} failed {attempt} times over {elapsed:.0f} s; giving up. "
                    f"Last error: {type(error).__name__}: {_redact(str(error))}", url=_redact(url),
                ) from error
            logger.warning("%s failed (%s: %s); attempt %d of %d in %.1f s",
                           description, type(error).__name__, _redact(str(error)), attempt + 1, policy.attempts,
                           delay)
            sleep(delay)
            attempt += 1
