"""Domain errors raised by services. The API layer maps them to status codes in one place.

Services never raise DRF exceptions: a service is called from views, tasks and the shell
alike, and only the HTTP adapter knows about status codes.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base class: ``code`` is machine-readable, ``message`` is for people."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidInput(DomainError):
    code = "invalid"
    status = 400


class PayloadTooLarge(DomainError):
    code = "too_large"
    status = 413


class UnsafeArtifact(DomainError):
    code = "unsafe_artifact"
    status = 422


class NotAllowed(DomainError):
    code = "forbidden"
    status = 403


class NotFound(DomainError):
    code = "not_found"
    status = 404


class Conflict(DomainError):
    code = "conflict"
    status = 409


class InvalidState(Conflict):
    """A transition was asked for from a state it does not start from."""

    code = "invalid_state"


class ServiceUnavailable(DomainError):
    """A dependency (database, Redis, artifact storage) failed: 503 with ``Retry-After``.

    Raised by services that know the failure (core.infrastructure turns the raw exceptions
    of the engines into it); the client's request was fine and may be sent again.
    """

    code = "service_unavailable"
    status = 503
