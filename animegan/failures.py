"""Turning a failed Ray Train run into one message a person can act on."""

from __future__ import annotations


def _unwrap(error: BaseException) -> BaseException:
    controller_failure = getattr(error, "controller_failure", None)
    if controller_failure is not None:
        error = controller_failure
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def is_actionable(error: BaseException) -> bool:
    """Bad input found by a worker, or storage that failed for good: the user can fix these."""
    from animegan.retries import StorageError

    return isinstance(error, (ValueError, StorageError))


def root_cause(error: BaseException) -> BaseException:
    """The original exception inside a Ray Train failure (or the error itself).

    When one worker fails, the others often die next in a broken collective op with an
    unrelated message, so an actionable cause on any worker wins over the lowest rank's.
    """
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return _unwrap(error)
    causes = [_unwrap(failures[rank]) for rank in sorted(failures)]
    return next((cause for cause in causes if is_actionable(cause)), causes[0])


def describe(error: BaseException) -> str:
    """One line: the worker-side exception's type and message, without Ray's traceback dump."""
    from animegan.storage import redact

    cause = root_cause(error)
    message = redact(str(cause)).strip().splitlines()
    first_line = message[-1] if message else ""
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
