"""Client for the Modelyard REST API (``/api/v1/``) and the ``modelyard`` command."""

from __future__ import annotations

from modelyard_client.client import (
    ApiError,
    Client,
    VersionRef,
    WaitOutcome,
    WaitResult,
)

__all__ = ["ApiError", "Client", "VersionRef", "WaitOutcome", "WaitResult"]
