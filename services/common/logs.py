"""Request ids and structured logs for the services.

Every call gets a request id: the caller's own (`x-request-id` metadata, up
to 64 characters of letters, digits and `._-`) or a new one. It comes back in
the response's trailing metadata and is on every log line written while the
call runs (a contextvar the log filter reads). `log_format: json` writes one
JSON object per line (time, level, logger, message, request_id, and the
exception when there is one), for log shippers.

Customer text is never logged: servicers and the interceptor log names,
codes and counts, and the messages of domain errors that quote a caller's
value are logged without it (`ErrorInterceptor`); `log_customer_text: true`
is the explicit debug setting that puts it back.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

REQUEST_ID_KEY = "x-request-id"
VERSION_KEY = "x-mtserve-version"  # every response says which release answered (`mtserve status` reads it)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("mtserve_request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's request id when it is a valid one, else a new one (a
    malformed id is replaced, not refused: it must not fail the call)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID_RE.match(value):
            return value
    return uuid.uuid4().hex[:16]


def set_request_id(request_id: str) -> None:
    _request_id.set(request_id)


# Process-wide, like the rest of logging's configuration (configure_service_logging).
_log_customer_text = False


def loggable(exc: BaseException) -> str:
    """A domain error for the log: a ValidationError without the value it
    quotes (a caller's value may be customer text), unless log_customer_text."""
    from mtserve.errors import ValidationError

    if isinstance(exc, ValidationError) and not _log_customer_text:
        return f"{exc.field}: {exc.rule}"
    return str(exc)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the call's, or "-") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure_service_logging(log_format: str, level: str, *, customer_text: bool = False) -> None:
    """The root logger of a service process: its level, the request-id
    filter on every handler, the text or JSON format, and whether quoted
    values may be logged (`log_customer_text`, for debugging only)."""
    global _log_customer_text
    _log_customer_text = customer_text
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))


__all__ = [
    "REQUEST_ID_KEY", "JsonFormatter", "RequestIdFilter", "configure_service_logging", "current_request_id", "loggable", "request_id_from",
    "set_request_id",
]
