"""The time windows monitoring answers for: one list for the metrics API and the dashboard.

Before, the API offered 1h/24h/7d and the dashboard 1h/24h/7d/30d. The dashboard's list is
what people saw and used, so it is the list: the API gained 30d (hour roll-ups are kept
MODELYARD_METRICS_HOUR_RETENTION_DAYS, 90 by default, so 30 days are there to read).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from django.utils import timezone

from core.errors import InvalidInput


class Window(NamedTuple):
    seconds: int
    # Chart bucket: at most a few hundred points a chart. Hours divide every bucket from 1 h
    # up, so the buckets of the long windows stay exact after minutes fold into hours.
    bucket_seconds: int


WINDOWS: dict[str, Window] = {
    "1h": Window(3600, 60),
    "24h": Window(86400, 300),
    "7d": Window(7 * 86400, 3600),
    "30d": Window(30 * 86400, 4 * 3600),
}


def window_check(window: str) -> str:
    """``window`` if it is one of WINDOWS; InvalidInput naming the choices otherwise."""
    if window not in WINDOWS:
        raise InvalidInput(
            f"window must be one of {', '.join(WINDOWS)}; got {window!r}.",
            code="invalid_window",
            details={"window": list(WINDOWS)},
        )
    return window


def window_bounds(window: str, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(start, end)`` of a named window ending now; InvalidInput for an unknown name."""
    end = now or timezone.now()
    return end - timedelta(seconds=WINDOWS[window_check(window)].seconds), end


def window_range(window: str, *, now: datetime | None = None) -> tuple[datetime, datetime, int]:
    """``(start, end, bucket seconds)`` of a chart; start is floored to a bucket boundary."""
    span, bucket = WINDOWS[window_check(window)]
    end = now or timezone.now()
    first = int((end.timestamp() - span) // bucket * bucket)
    return datetime.fromtimestamp(first, tz=UTC), end, bucket
