"""Structured logs: one JSON object per line, every record of a request with its id.

The request id lives in a context variable set by ``core.middleware.RequestIdMiddleware``;
``RequestIdFilter`` copies it onto each record, so code that logs needs no request at hand.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import Any

from django.core.signals import request_finished
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "modelyard_request_id", default=""
)

# What a proxy or client may hand us as an id: a UUID, a trace id, "req-42". Anything else
# (newlines, quotes, 4 KB of text) would let a client forge or bloat log lines.
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id_from_header(raw: str | None) -> str:
    """The client's id if it is well-formed, else a fresh one."""
    if raw and _WELL_FORMED.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


def request_id_get() -> str:
    return _request_id.get()


def request_id_set(value: str) -> contextvars.Token[str]:
    return _request_id.set(value)


def request_id_clear(**kwargs: Any) -> None:
    """Receiver of request_finished: a thread's next log lines belong to no request."""
    _request_id.set("")


request_finished.connect(request_id_clear, dispatch_uid="modelyard-request-id-clear")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` ("-" outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(_JsonFormatter):
    """timestamp, level, logger, message, request_id, plus any ``extra=`` fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "%(levelname)s %(name)s %(message)s %(request_id)s")
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", True)
        super().__init__(*args, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # Django's request logger passes the HttpRequest itself; its repr is the useful part.
        if "request" in log_data and not isinstance(log_data["request"], str | int | float):
            request = log_data.pop("request")
            log_data["method"] = getattr(request, "method", None)
            log_data["path"] = getattr(request, "path", None)
