"""PostgreSQL connection options that bound how long a stalled server can hold a caller."""

from __future__ import annotations

from typing import Any


def database_timeout_options(
    options: dict[str, Any], *, connect_timeout: int, statement_timeout: float
) -> dict[str, Any]:
    """``options`` (from DATABASE_URL) with libpq's connect_timeout and a server-side
    statement_timeout (milliseconds) added; values already in the URL win."""
    merged = {"connect_timeout": connect_timeout, **options}
    if statement_timeout > 0:
        setting = f"-c statement_timeout={round(statement_timeout * 1000)}"
        # libpq's `options` is one string of command-line switches: keep the URL's own.
        existing = str(merged.get("options", ""))
        if "statement_timeout" not in existing:
            merged["options"] = f"{existing} {setting}".strip()
    return merged
