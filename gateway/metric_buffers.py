"""The roll-up side of the gateway's metric buffers (sync redis-py, for the Django beat task):
reading a minute's buffer hash, its recorded base, and marking it rolled up. The gateway's
recorder and the hash layout are in gateway/metrics.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import redis
    import redis.asyncio


from gateway.metrics import (
    BUCKET_COUNT,
    METRICS_DIRTY_KEY,
    METRICS_KEY_PREFIX,
    percentile_from_histogram,
)


@dataclass(frozen=True, slots=True)
class CellTotals:
    """Totals of one (minute, deployment, version, status): a buffer's, a base, or their sum."""

    count: int = 0
    rows: int = 0
    errors: int = 0
    latency_us_sum: int = 0
    histogram: tuple[int, ...] = (0,) * BUCKET_COUNT

    def __add__(self, other: CellTotals) -> CellTotals:
        return CellTotals(
            count=self.count + other.count,
            rows=self.rows + other.rows,
            errors=self.errors + other.errors,
            latency_us_sum=self.latency_us_sum + other.latency_us_sum,
            histogram=tuple(a + b for a, b in zip(self.histogram, other.histogram, strict=True)),
        )


@dataclass(frozen=True, slots=True)
class MinuteBuffer:
    """One buffer hash, parsed: the counts flushed into it, and the base the roll-up gave it."""

    key: str
    minute: int
    deployment: str
    version: int
    status: int
    count: int
    rows: int
    errors: int
    latency_us_sum: int
    histogram: tuple[int, ...]
    # Created by a flush that found no hash (every buffer since flushes mark it).
    from_empty: bool = False
    # What the stored row held before this hash's counts; None until the roll-up sets it.
    base: CellTotals | None = None

    @property
    def needs_base(self) -> bool:
        """Never rolled up: the stored row (if any) holds none of these counts yet."""
        return self.from_empty and self.base is None

    def total(self) -> CellTotals:
        """The minute's complete total: base + this hash (the hash alone if it has no base)."""
        own = CellTotals(self.count, self.rows, self.errors, self.latency_us_sum, self.histogram)
        return own if self.base is None else self.base + own

    def percentile_ms(self, q: float) -> float | None:
        return percentile_from_histogram(self.histogram, q)


def parse_buffer_key(key: str) -> tuple[int, str, int, int]:
    """Split a buffer key into (minute, deployment, version, status)."""
    if not key.startswith(METRICS_KEY_PREFIX):
        raise ValueError(f"not a metrics buffer key (expected {METRICS_KEY_PREFIX}...): {key!r}")
    parts = key[len(METRICS_KEY_PREFIX) :].split(":")
    if len(parts) != 4:
        raise ValueError(
            f"metrics buffer key must be {METRICS_KEY_PREFIX}minute:deployment:version:status, "
            f"got {key!r}"
        )
    minute, deployment, version, status = parts
    return int(minute), deployment, int(version), int(status)


_BUCKET_FIELD = re.compile(r"b(\d+)")
_BASE_PREFIX = "pg."  # not "b...": a bucket field is b{i}


def _totals_from_values(key: str, values: Mapping[str, int]) -> CellTotals:
    histogram = [0] * BUCKET_COUNT
    for name, count in values.items():
        match = _BUCKET_FIELD.fullmatch(name)
        if match is None:
            continue
        index = int(match.group(1))
        if not 0 <= index < BUCKET_COUNT:
            raise ValueError(f"metrics buffer {key!r} has out-of-range bucket field {name!r}")
        histogram[index] = count
    return CellTotals(
        count=values.get("count", 0),
        rows=values.get("rows", 0),
        errors=values.get("errors", 0),
        latency_us_sum=values.get("latency_us_sum", 0),
        histogram=tuple(histogram),
    )


def buffer_from_fields(key: str, fields: Mapping[bytes | str, bytes | str]) -> MinuteBuffer:
    """Build a :class:`MinuteBuffer` from a buffer hash's fields (as HGETALL returns them)."""
    minute, deployment, version, status = parse_buffer_key(key)
    values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in fields.items()}
    own = _totals_from_values(key, values)
    base = None
    if values.get("pg"):
        base = _totals_from_values(
            key,
            {k[len(_BASE_PREFIX) :]: v for k, v in values.items() if k.startswith(_BASE_PREFIX)},
        )
    return MinuteBuffer(
        key=key,
        minute=minute,
        deployment=deployment,
        version=version,
        status=status,
        count=own.count,
        rows=own.rows,
        errors=own.errors,
        latency_us_sum=own.latency_us_sum,
        histogram=own.histogram,
        from_empty=bool(values.get("from_empty")),
        base=base,
    )


def metrics_dirty_keys(client: redis.Redis, *, limit: int = 10_000) -> list[tuple[str, int]]:
    """Return up to ``limit`` (buffer key, flush score) pairs that changed since rolled up."""
    entries = client.zrange(METRICS_DIRTY_KEY, 0, limit - 1, withscores=True)
    # withscores=True answers (member, score) pairs; redis's stubs cannot tell from the flag.
    pairs = cast("list[tuple[bytes | str, float]]", entries)
    return [
        (member.decode() if isinstance(member, bytes) else member, int(score))
        for member, score in pairs
    ]


def metrics_buffer_read(client: redis.Redis, key: str) -> MinuteBuffer | None:
    """Return the buffer's current totals, or ``None`` if it expired or never existed."""
    fields = client.hgetall(key)
    if not fields:
        return None
    return buffer_from_fields(key, fields)


# ZREM only if no flush touched the key since the roll-up read its score.
_MARK_CLEAN_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def metrics_mark_clean(client: redis.Redis, key: str, score: int) -> bool:
    """Drop ``key`` from the dirty set if its score is still ``score``; True if dropped."""
    return bool(client.eval(_MARK_CLEAN_LUA, 1, METRICS_DIRTY_KEY, key, score))


# KEYS[1] = a buffer; ARGV = base field, value, ... Sets the base only on a hash that still
# exists (Redis may have restarted since it was read) and has none, then answers the hash.
_SET_BASE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
if redis.call('HEXISTS', KEYS[1], 'pg') == 0 then
  redis.call('HSET', KEYS[1], 'pg', 1, unpack(ARGV))
end
return redis.call('HGETALL', KEYS[1])
"""


def metrics_buffer_set_base(client: redis.Redis, key: str, base: CellTotals) -> Any:
    """Record ``base`` (the stored row before this hash) on ``key`` unless it has one.

    Answers the hash's fields after the call as a flat list (``None`` if the hash is gone);
    :func:`buffer_fields_answer` turns that into a :class:`MinuteBuffer`. On a pipeline the
    call is queued and the answer comes from ``execute()``.
    """
    args: list[str | int] = [
        f"{_BASE_PREFIX}count",
        base.count,
        f"{_BASE_PREFIX}rows",
        base.rows,
        f"{_BASE_PREFIX}errors",
        base.errors,
        f"{_BASE_PREFIX}latency_us_sum",
        base.latency_us_sum,
    ]
    for index, count in enumerate(base.histogram):
        if count:
            args += (f"{_BASE_PREFIX}b{index}", count)
    return client.eval(_SET_BASE_LUA, 1, key, *args)


def buffer_fields_answer(key: str, answer: Sequence[bytes | str] | None) -> MinuteBuffer | None:
    """Parse :func:`metrics_buffer_set_base`'s answer (a flat field, value list)."""
    if not answer:
        return None
    return buffer_from_fields(key, dict(zip(answer[::2], answer[1::2], strict=True)))


def latency_mean_ms(latency_us_sum: int, count: int) -> float | None:
    """Mean latency in ms from a buffer's sum and count (``None`` for no requests)."""
    if count <= 0:
        return None
    return latency_us_sum / count / 1e3
