"""Turning a failed Ray Train run into one message a person can act on."""

from __future__ import annotations


def root_cause(error: BaseException) -> BaseException:
    """The first worker's original exception inside a Ray Train failure (or the error itself)."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        error = failures[min(failures)]
    controller_failure = getattr(error, "controller_failure", None)
    if controller_failure is not None:
        error = controller_failure
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def describe(error: BaseException) -> str:
    """One line: the worker-side exception's type and message, without Ray's traceback dump."""
    cause = root_cause(error)
    message = str(cause).strip().splitlines()
    first_line = message[-1] if message else ""
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
