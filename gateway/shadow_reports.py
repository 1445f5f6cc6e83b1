"""What the gateway's shadow comparisons leave in Redis, and the platform's reader for them.

The contract between the gateway (writer, ``gateway.shadow``) and the rollout side (reader),
like ``gateway.replica_reports``; it needs nothing but redis-py so either side imports it.

``modelyard:shadow:<deployment>:<shadow version>:<unix minute>`` (hash, expires
:data:`SHADOW_TTL_S` after its last write), summed over every gateway process (HINCRBY /
HINCRBYFLOAT, the one maximum by compare-and-set, all of a flush in one script call):

===================  ===========================================================================
field                meaning
===================  ===========================================================================
``mirrored``         live requests sent to the shadow
``dropped``          live requests picked for mirroring but dropped: the shadow queue was full
``compared``         mirrored requests both arms answered 2xx with a ``predictions`` list of the
                     same length (the rest: ``shape_mismatch``, ``unparsable``,
                     ``status_differs``, or an error below)
``rows``             prediction elements compared (element-wise over ``predictions``)
``agree``            of those, equal in both answers
``prob_values``      probability values compared (row by row, class by class, when both answers
                     have ``probabilities`` rows of the same shape; ``prob_mismatch`` otherwise)
``prob_abs_sum``     sum of ``|p_live - p_shadow|`` over those values
``prob_abs_max``     the largest ``|p_live - p_shadow|``
``live_ms_sum``      upstream latency of the live answer, ms, summed over ``compared``
``shadow_ms_sum``    the same for the shadow's answer, as the gateway's shadow process timed it:
                     at idle CPU priority (``gateway.shadow_process``), so on a busy machine
                     it includes that process's own waits for CPU
``errors``           shadow failures: ``errors_status`` (it answered >= 500), ``errors_timeout``
                     (no answer within ``shadow_timeout_s``), ``errors_connect`` (refused,
                     reset, cut, a broken answer)
===================  ===========================================================================

:func:`shadow_read` sums the minutes of a window into :class:`ShadowTotals`, whose properties
give the rates and means (``None`` when there is nothing to divide by: no data is never
"agrees").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

SHADOW_PREFIX = "modelyard:shadow:"
# One key per flushed batch: a batch sent again after a lost answer is recognised and not
# counted twice. It must outlive the outage between the lost answer and the retry; an hour,
# so a gateway flushing every second keeps at most 3,600 of them.
SHADOW_FLUSH_ID_PREFIX = "modelyard:shadow-flush:"
SHADOW_FLUSH_ID_TTL_S = 3600
# A few days: the rollout side reads windows of minutes to hours; keys outlive a weekend.
SHADOW_TTL_S = 3 * 86_400

COUNT_FIELDS = (
    "mirrored",
    "dropped",
    "compared",
    "rows",
    "agree",
    "prob_values",
    "prob_mismatch",
    "shape_mismatch",
    "unparsable",
    "status_differs",
    "errors",
    "errors_status",
    "errors_timeout",
    "errors_connect",
)
SUM_FIELDS = ("prob_abs_sum", "live_ms_sum", "shadow_ms_sum")
MAX_FIELD = "prob_abs_max"


def shadow_key(deployment: str, version: int, minute: int) -> str:
    return f"{SHADOW_PREFIX}{deployment}:{version}:{minute}"


@dataclass
class ShadowTotals:
    """One deployment's shadow version over a window: the fields above, summed."""

    mirrored: int = 0
    dropped: int = 0
    compared: int = 0
    rows: int = 0
    agree: int = 0
    prob_values: int = 0
    prob_mismatch: int = 0
    shape_mismatch: int = 0
    unparsable: int = 0
    status_differs: int = 0
    errors: int = 0
    errors_status: int = 0
    errors_timeout: int = 0
    errors_connect: int = 0
    prob_abs_sum: float = 0.0
    live_ms_sum: float = 0.0
    shadow_ms_sum: float = 0.0
    prob_abs_max: float | None = None

    def add_hash(self, raw: dict[bytes, bytes] | dict[str, str]) -> None:
        for name, value in raw.items():
            key = name.decode() if isinstance(name, bytes) else name
            if key in COUNT_FIELDS:
                setattr(self, key, getattr(self, key) + int(value))
            elif key in SUM_FIELDS:
                setattr(self, key, getattr(self, key) + float(value))
            elif key == MAX_FIELD:
                self.prob_abs_max = max(self.prob_abs_max or 0.0, float(value))

    @property
    def agreement_rate(self) -> float | None:
        return self.agree / self.rows if self.rows else None

    @property
    def prob_abs_mean(self) -> float | None:
        return self.prob_abs_sum / self.prob_values if self.prob_values else None

    @property
    def latency_diff_ms_mean(self) -> float | None:
        """Mean of (shadow - live) upstream latency over the compared requests."""
        if not self.compared:
            return None
        return (self.shadow_ms_sum - self.live_ms_sum) / self.compared

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.mirrored if self.mirrored else None

    def as_dict(self) -> dict[str, float | int | None]:
        data: dict[str, float | int | None] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("agreement_rate", "prob_abs_mean", "latency_diff_ms_mean", "error_rate"):
            data[name] = getattr(self, name)
        return data


def _unix(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


def shadow_read(
    client: redis.Redis,
    deployment: str,
    version: int,
    since: datetime | float,
    until: datetime | float,
) -> ShadowTotals:
    """Sum the minutes overlapping ``[since, until)`` (aware datetimes or unix seconds)."""
    first = math.floor(_unix(since) / 60)
    last = math.ceil(_unix(until) / 60)  # exclusive
    totals = ShadowTotals()
    if last <= first:
        return totals
    with client.pipeline(transaction=False) as pipe:
        for minute in range(first, last):
            pipe.hgetall(shadow_key(deployment, version, minute))
        for raw in pipe.execute():
            totals.add_hash(raw)
    return totals
