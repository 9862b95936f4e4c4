"""Domain errors. Every boundary (CLI, gRPC, file readers) maps these, and only
these, to its own vocabulary: the gRPC interceptor to status codes, the CLI to a
one-line message and a non-zero exit."""

from __future__ import annotations

from typing import Any


class MtserveError(Exception):
    """Base of every error the project raises on purpose."""


class ValidationError(MtserveError, ValueError):
    """Bad input: names the field, the rule it broke and the value given."""

    def __init__(self, field: str, rule: str, value: Any = None, *, show_value: bool = True):
        self.field = field
        self.rule = rule
        self.value = value
        self.show_value = show_value
        message = f"{field}: {rule}"
        if show_value:
            message += f" (got {_short(value)})"
        super().__init__(message)


class NotFoundError(MtserveError, LookupError):
    """An unknown task, version, checkpoint or job."""


class PreconditionError(MtserveError):
    """The request is valid but the system is not in a state to serve it
    (a task with no route, a route to a checkpoint that cannot be loaded)."""


class OverloadedError(MtserveError):
    """A bounded queue is full; the caller should back off and retry."""


class UnavailableError(MtserveError):
    """The service is shutting down or a dependency cannot be reached."""


class IntegrityError(MtserveError):
    """An artefact does not match its manifest (hash mismatch, pickle file, missing file)."""


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
