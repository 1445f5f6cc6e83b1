"""One error body for the whole API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DataError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from core.errors import DomainError
from core.infrastructure import infrastructure_error

logger = logging.getLogger(__name__)


def _first_message(detail: Any) -> str:
    """The first human-readable message in DRF's nested error detail, prefixed by its field."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            inner = _first_message(value)
            return inner if field == "non_field_errors" else f"{field}: {inner}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def _is_nul_refusal(exc: Exception) -> bool:
    """PostgreSQL refusing a NUL character (text) or its \\u0000 escape (jsonb)."""
    # psycopg ("cannot contain NUL (0x00) bytes"), Django ("cannot contain NUL (0x00)
    # characters") and PostgreSQL's jsonb ("\\u0000 cannot be converted to text").
    text = str(exc)
    return isinstance(exc, DataError | ValueError) and (
        "NUL (0x00)" in text or "\\u0000 cannot be converted" in text
    )


def unavailable_headers() -> dict[str, str]:
    """Headers of every 503: when to try again."""
    return {"Retry-After": str(settings.MODELYARD_RETRY_AFTER_SECONDS)}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    unavailable = infrastructure_error(exc)
    if unavailable is not None:
        # Logged with the traceback: the client gets a 503, the operator needs the cause.
        logger.warning("infrastructure error: %s", unavailable.code, exc_info=exc)
        set_rollback()
        return Response(
            error_body(unavailable.code, unavailable.message, unavailable.details),
            status=unavailable.status,
            headers=unavailable_headers(),
        )
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if _is_nul_refusal(exc):
        # A last line: the parsers refuse NULs in JSON and form bodies, naming the field; one
        # that arrived another way (a query parameter, a header) still is the client's 400.
        # The failed statement rolled back the atomic block it ran in.
        return Response(
            error_body(
                "nul_character",
                "The request contains a NUL character (\\u0000), which cannot be stored.",
            ),
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        code, message, details = "invalid", _first_message(exc.detail), exc.detail
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        message, details = str(exc.detail), None
    else:  # pragma: no cover - DRF only handles APIException subclasses
        code, message, details = "error", str(exc), None
    if response.status_code == status.HTTP_401_UNAUTHORIZED:
        code = "not_authenticated" if code != "authentication_failed" else code
    response.data = error_body(code, message, details)
    return response
