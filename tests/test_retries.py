"""Retry policy for storage calls: what is retried, how patiently, and what the final error says."""

from __future__ import annotations

import errno
import random

import pytest

from animegan.retries import RetryPolicy, StorageError, call_with_retries, is_transient

FAST = RetryPolicy(attempts=4, initial_delay=0.01, multiplier=2.0, max_delay=0.02, jitter=0.0)


class FlakyCall:
    """A real callable that fails with the given errors, in order, then returns 'done'."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_delays_grow_geometrically_up_to_the_cap():
    policy = RetryPolicy(attempts=6, initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.0)
    assert list(policy.delays()) == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_its_fraction():
    policy = RetryPolicy(attempts=50, initial_delay=1.0, multiplier=1.0, max_delay=1.0, jitter=0.25)
    delays = list(policy.delays(random.Random(3)))
    assert len(delays) == 49
    assert all(0.75 <= delay <= 1.25 for delay in delays)
    assert len(set(delays)) > 40  # really random, so that workers do not retry in step


def test_a_policy_without_attempts_is_rejected():
    with pytest.raises(ValueError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize("error", [
    ConnectionResetError("reset by peer"),
    ConnectionRefusedError("refused"),
    TimeoutError("read timed out"),
    OSError(errno.ENETUNREACH, "network is unreachable"),
])
def test_connection_trouble_is_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    FileNotFoundError("gs://bucket/missing.jpg"),
    PermissionError("denied"),
    OSError("Forbidden: gs://bucket/x"),
    ValueError("Bad Request"),
    KeyError("x"),
])
def test_errors_retrying_cannot_fix_are_not_transient(error):
    assert not is_transient(error)


def test_http_statuses_from_gcsfs_are_classified_by_code():
    from gcsfs.retry import HttpError

    assert is_transient(HttpError({"code": 503, "message": "backend unavailable"}))
    assert is_transient(HttpError({"code": 429, "message": "slow down"}))
    assert not is_transient(HttpError({"code": 404, "message": "no such object"}))
    assert not is_transient(HttpError({"code": 403, "message": "forbidden"}))


def test_aiohttp_connection_errors_are_transient():
    import aiohttp

    assert is_transient(aiohttp.ServerDisconnectedError())
    assert is_transient(aiohttp.ClientPayloadError("connection dropped mid-body"))


def test_transient_failures_are_retried_until_the_call_succeeds():
    call = FlakyCall(ConnectionResetError("reset"), TimeoutError("slow"))
    slept = []
    assert call_with_retries(call, what="reading gs://b/x", policy=FAST, sleep=slept.append) == "done"
    assert call.calls == 3
    assert slept == [0.01, 0.02]


def test_a_failure_that_persists_becomes_one_error_naming_the_url():
    call = FlakyCall(*[ConnectionRefusedError("connection refused")] * 10)
    with pytest.raises(StorageError) as raised:
        call_with_retries(call, what="reading gs://bucket/faces/0001.jpg", url="gs://bucket/faces/0001.jpg",
                          policy=FAST, sleep=lambda seconds: None)
    assert call.calls == FAST.attempts
    message = str(raised.value)
    assert "reading gs://bucket/faces/0001.jpg failed 4 times" in message
    assert "ConnectionRefusedError: connection refused" in message
    assert raised.value.url == "gs://bucket/faces/0001.jpg"


def test_errors_retrying_cannot_fix_are_raised_at_once():
    call = FlakyCall(FileNotFoundError("gs://bucket/missing.jpg"))
    slept = []
    with pytest.raises(FileNotFoundError):
        call_with_retries(call, what="reading gs://bucket/missing.jpg", policy=FAST, sleep=slept.append)
    assert call.calls == 1
    assert slept == []


def test_the_description_may_be_computed_when_the_call_fails():
    failing = ["gs://b/first.jpg"]
    call = FlakyCall(*[ConnectionResetError("reset")] * 5)

    def describe() -> str:
        return f"reading {failing[0]}"

    failing[0] = "gs://b/second.jpg"  # what is failing changed after the call was set up
    with pytest.raises(StorageError, match="reading gs://b/second.jpg failed"):
        call_with_retries(call, what=describe, policy=FAST, sleep=lambda seconds: None)


def test_storage_errors_survive_pickling_with_their_url():
    import pickle

    error = pickle.loads(pickle.dumps(StorageError("reading gs://b/x failed", url="gs://b/x")))
    assert isinstance(error, StorageError)
    assert error.url == "gs://b/x"
    assert "gs://b/x" in str(error)
