"""Per-request metrics: recorded in memory on the request path, flushed to Redis every few seconds.

What is recorded
----------------
For every request to a known deployment, one observation under the cell
``(minute, deployment, version, status)`` -- ``minute`` is the unix time (s) of the start of the
UTC minute the request finished in, ``status`` the exact HTTP status code returned to the client
(group into classes when reading, never when writing, so nothing is lost):

- ``count``: requests
- ``rows``: rows predicted (``len(body["instances"])``; 1 for a body without ``instances``;
  0 when the request was refused before its body was read)
- ``errors``: requests the version itself failed: a 5xx answered by its model server, or
  the gateway's 502/504 for a model server it could not reach or that did not answer. Not
  the gateway's own 5xx (a 503 with no live slot, a gateway bug's 500), and never a 4xx:
  what a client causes must not count against the version, since error-rate guards roll a
  version back on this figure. Client-caused answers are the cell's 4xx ``status``.
- ``latency_us_sum``: sum of latencies in whole microseconds
- a latency histogram over the fixed buckets :data:`BUCKET_BOUNDS_MS`

Histograms from any number of gateway processes and flushes merge by adding counts bucket by
bucket, which is why the bounds are a fixed module constant and not adaptive.

Redis layout (written by :meth:`MetricsRecorder.flush`)
------------------------------------------------------
``modelyard:metrics:{minute}:{deployment}:{version}:{status}`` (hash; deployment names never hold
``:``, see ``gateway.routes.DEPLOYMENT_NAME_RE``)
    ``count``, ``rows``, ``errors``, ``latency_us_sum``, and ``b{i}`` = requests whose latency
    fell in bucket ``i`` (only non-zero buckets are present). Every flush adds to these with
    HINCRBY, so the hash always holds the whole total of its minute so far. It expires
    :data:`BUFFER_TTL_S` after its last flush.

``modelyard:metrics:dirty`` (sorted set)
    member = a buffer key above; score = how many flushes have touched it (ZINCRBY 1 in the same
    atomic script call as the HINCRBYs), so the score changes whenever the hash does.

How the roll-up moves buffers into PostgreSQL idempotently
-----------------------------------------------------------
1. ``metrics_dirty_keys(client)`` -> ``[(key, score), ...]``.
2. ``metrics_buffer_read(client, key)`` -> a :class:`MinuteBuffer` (``None`` if it expired).
3. Upsert the row for (minute, deployment, version, status) with the buffer's ABSOLUTE values
   (``ON CONFLICT ... DO UPDATE SET count = EXCLUDED.count, ...``, never ``count + ...``): the
   hash is the complete total, so running the roll-up twice writes the same row.
4. ``metrics_mark_clean(client, key, score)`` drops the key from the dirty set only if its score
   is unchanged; a flush that landed meanwhile keeps it dirty for the next run. Late flushes
   (a gateway that buffered through a Redis outage) land in the same key and simply make it dirty
   again.

:func:`percentile_from_histogram` turns bucket counts into a latency percentile; the roll-up and
the tests both use it so they agree.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.commands.core import AsyncScript

logger = logging.getLogger(__name__)

METRICS_KEY_PREFIX = "modelyard:metrics:"
METRICS_DIRTY_KEY = "modelyard:metrics:dirty"
BUFFER_TTL_S = 6 * 3600


def _bucket_bounds() -> tuple[float, ...]:
    # 50 µs growing by 10 % a step (4 significant digits keep the constants readable), closed
    # by 60 s: 148 upper bounds. A percentile read off them is within ~10 % of the truth.
    bounds = [float(f"{0.05 * 1.1**i:.4g}") for i in range(147)]
    bounds.append(60_000.0)
    return tuple(bounds)


BUCKET_BOUNDS_MS: tuple[float, ...] = _bucket_bounds()
"""Upper bounds (ms, inclusive) of the latency buckets. Bucket ``i`` counts latencies in
``(BUCKET_BOUNDS_MS[i-1], BUCKET_BOUNDS_MS[i]]`` (bucket 0 from 0); one extra overflow bucket
``len(BUCKET_BOUNDS_MS)`` counts everything above 60 s. A histogram is a list of
``BUCKET_COUNT`` integers."""

BUCKET_COUNT = len(BUCKET_BOUNDS_MS) + 1


def bucket_index(latency_ms: float) -> int:
    """Return the histogram bucket that ``latency_ms`` falls in."""
    return bisect.bisect_left(BUCKET_BOUNDS_MS, latency_ms)


def percentile_from_histogram(counts: Sequence[int], q: float) -> float | None:
    """Return the ``q``-quantile (``0 <= q <= 1``, e.g. 0.99) in ms, or ``None`` if empty.

    Within a bucket the value is interpolated geometrically (the buckets are log-spaced);
    the overflow bucket answers its lower bound, 60 s, since it has no upper one.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1] (0.99 for p99), got {q!r}")
    if len(counts) != BUCKET_COUNT:
        raise ValueError(
            f"histogram must have {BUCKET_COUNT} buckets (BUCKET_BOUNDS_MS + overflow), "
            f"got {len(counts)}"
        )
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count <= 0:
            continue
        if cumulative + count >= rank:
            if index == len(BUCKET_BOUNDS_MS):
                return BUCKET_BOUNDS_MS[-1]
            upper = BUCKET_BOUNDS_MS[index]
            fraction = max(0.0, (rank - cumulative) / count)
            if index == 0:
                return upper * fraction
            lower = BUCKET_BOUNDS_MS[index - 1]
            # float ** float is typed Any (a negative base gives a complex); the ratio is > 1.
            growth: float = (upper / lower) ** fraction
            return lower * growth
        cumulative += count
    return BUCKET_BOUNDS_MS[-1]  # only reachable through float rounding of rank


def merge_histograms(histograms: Iterable[Sequence[int]]) -> list[int]:
    """Add histograms bucket by bucket (e.g. several minutes or several statuses)."""
    merged = [0] * BUCKET_COUNT
    for histogram in histograms:
        for index, count in enumerate(histogram):
            merged[index] += count
    return merged


@dataclass(slots=True)
class _Cell:
    count: int = 0
    rows: int = 0
    errors: int = 0
    latency_us_sum: int = 0
    # Sparse: most requests of one cell land in a handful of buckets.
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, other: _Cell) -> None:
        self.count += other.count
        self.rows += other.rows
        self.errors += other.errors
        self.latency_us_sum += other.latency_us_sum
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count


CellKey = tuple[int, str, int, int]  # (minute, deployment, version, status)
_FOLD_EVERY = 256  # observations folded into cells at once (~0.3 ms of work)


def buffer_key(minute: int, deployment: str, version: int, status: int) -> str:
    return f"{METRICS_KEY_PREFIX}{minute}:{deployment}:{version}:{status}"


class MetricsRecorder:
    """In-memory cells for the requests since the last flush (one per gateway process)."""

    def __init__(self, *, max_pending_cells: int = 100_000) -> None:
        self._cells: dict[CellKey, _Cell] = {}
        # (unix time, deployment, version, status, latency s, rows, version error) not yet
        # in a cell.
        self._observations: list[tuple[float, str, int, int, float, int, bool]] = []
        # Bounds memory while Redis is unreachable: past this many cells the oldest minutes go.
        self.max_pending_cells = max_pending_cells
        self.dropped_cells = 0
        self.flushed_requests = 0
        self._script: AsyncScript | None = None
        # For GET /metrics (Prometheus counters never go down): everything flushed so far,
        # without the minute, plus the cells a flush has taken but not yet written.
        self._totals: dict[tuple[str, int, int], _Cell] = {}
        self._inflight: dict[CellKey, _Cell] = {}

    def record(
        self,
        deployment: str,
        version: int,
        status: int,
        latency_s: float,
        rows: int,
        version_error: bool | None = None,
        now: float | None = None,
    ) -> None:
        """Count one finished request (request path: an append, no I/O).

        ``version_error``: the version failed this request (see ``errors`` above); None
        means "any 5xx", for callers that cannot tell who failed.

        The observation is folded into its cell later, :data:`_FOLD_EVERY` at a time: measured
        in the gateway, the same arithmetic cost ~4 µs per request when done between two
        requests and ~1 µs in a loop, where its code and data stay in the CPU's caches.
        """
        observations = self._observations
        if version_error is None:
            version_error = status >= 500
        observations.append(
            (
                time.time() if now is None else now,
                deployment,
                version,
                status,
                latency_s,
                rows,
                version_error,
            )
        )
        if len(observations) >= _FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        """Add the recorded observations to their cells."""
        observations, self._observations = self._observations, []
        cells = self._cells
        bounds = BUCKET_BOUNDS_MS
        for at, deployment, version, status, latency_s, rows, version_error in observations:
            key = (int(at) // 60 * 60, deployment, version, status)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _Cell()
            cell.count += 1
            cell.rows += rows
            if version_error:
                cell.errors += 1
            cell.latency_us_sum += round(latency_s * 1e6)
            index = bisect.bisect_left(bounds, latency_s * 1e3)
            cell.buckets[index] = cell.buckets.get(index, 0) + 1

    @property
    def pending_requests(self) -> int:
        self._fold()
        return sum(cell.count for cell in self._cells.values())

    def totals(self) -> dict[tuple[str, int, int], _Cell]:
        """Every request recorded by this process, by (deployment, version, status).

        Built at scrape time from the flushed totals, the cells being flushed and the pending
        ones (each request is in exactly one of the three), so recording stays an append.
        Cells dropped while Redis was unreachable are gone from here too.
        """
        self._fold()
        merged: dict[tuple[str, int, int], _Cell] = {}
        sources: list[Iterable[tuple[tuple[str, int, int], _Cell]]] = [
            self._totals.items(),
            (((d, v, s), cell) for (_, d, v, s), cell in self._inflight.items()),
            (((d, v, s), cell) for (_, d, v, s), cell in self._cells.items()),
        ]
        for source in sources:
            for key, cell in source:
                total = merged.get(key)
                if total is None:
                    total = merged[key] = _Cell()
                total.add(cell)
        return merged

    def _count_flushed(self, batch: list[tuple[CellKey, _Cell]]) -> None:
        for key, cell in batch:
            self._inflight.pop(key, None)
            total_key = (key[1], key[2], key[3])
            total = self._totals.get(total_key)
            if total is None:
                total = self._totals[total_key] = _Cell()
            total.add(cell)

    def _restore(self, cells: dict[CellKey, _Cell]) -> None:
        """Put back cells whose flush failed, merging with what was recorded meanwhile."""
        for key, cell in cells.items():
            current = self._cells.get(key)
            if current is None:
                self._cells[key] = cell
            else:
                current.add(cell)
        overflow = len(self._cells) - self.max_pending_cells
        if overflow > 0:
            for key in sorted(self._cells)[:overflow]:  # tuple order: oldest minute first
                self.dropped_cells += 1
                del self._cells[key]
            logger.error(
                "metrics buffer over %d cells while Redis is unreachable; dropped the oldest "
                "(%d dropped so far)",
                self.max_pending_cells,
                self.dropped_cells,
            )

    async def flush(self, client: redis.asyncio.Redis) -> int:
        """Add everything recorded since the last flush to the Redis buffers; return requests.

        One Lua call per batch of cells instead of one HINCRBY per field: redis-py spends
        ~20 µs of event-loop time per command, so 30 cells of ~50 buckets each took 40 ms of
        HINCRBYs in a MULTI -- a stall every flush -- against ~2 ms as one script call.
        A script runs atomically: a failed call applied nothing and its cells are kept.
        """
        self._fold()
        if not self._cells:
            return 0
        # Swapping the dict is atomic for the event loop: requests finishing during the await
        # below land in the fresh dict.
        cells, self._cells = self._cells, {}
        self._inflight = cells
        pending = list(cells.items())
        flushed = 0
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_FLUSH_LUA)  # EVALSHA, loads it if missing
        script = self._script
        while pending:
            batch, rest = pending[:_FLUSH_BATCH_CELLS], pending[_FLUSH_BATCH_CELLS:]
            args: list[str | int] = [BUFFER_TTL_S]
            for (minute, deployment, version, status), cell in batch:
                fields: list[str | int] = [
                    "count",
                    cell.count,
                    "rows",
                    cell.rows,
                    "errors",
                    cell.errors,
                    "latency_us_sum",
                    cell.latency_us_sum,
                ]
                for index, count in cell.buckets.items():
                    fields += (f"b{index}", count)
                args += (buffer_key(minute, deployment, version, status), len(fields) // 2)
                args += fields
            try:
                await script(keys=[METRICS_DIRTY_KEY], args=args)
            except BaseException:
                # This batch and the ones after it were not applied: keep them for next time.
                # (The gateway never cancels a flush midway; see the flush loop in gateway.app.)
                self._inflight = {}
                self._restore(dict(pending))
                raise
            self._count_flushed(batch)
            flushed += sum(cell.count for _, cell in batch)
            self.flushed_requests += sum(cell.count for _, cell in batch)
            pending = rest
        self._inflight = {}
        return flushed


# KEYS[1] = the dirty set; ARGV = ttl, then per buffer: key, field count, field, increment, ...
# Buffer keys travel in ARGV because their number varies; Redis Cluster would need them in KEYS
# (and in one slot), which the MULTI this replaces could not offer either.
_FLUSH_LUA = """
local ttl = tonumber(ARGV[1])
local i = 2
while i <= #ARGV do
  local key = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    local by = tonumber(ARGV[i + 1])
    if by ~= 0 then
      redis.call('HINCRBY', key, ARGV[i], by)
    end
    i = i + 2
  end
  redis.call('EXPIRE', key, ttl)
  redis.call('ZINCRBY', KEYS[1], 1, key)
end
return 1
"""
_FLUSH_BATCH_CELLS = 500


# --- the roll-up side (sync redis-py, for the Django beat task) ---------------------------


@dataclass(frozen=True, slots=True)
class MinuteBuffer:
    """One buffer hash, parsed: the totals of one (minute, deployment, version, status)."""

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


def buffer_from_fields(key: str, fields: Mapping[bytes | str, bytes | str]) -> MinuteBuffer:
    """Build a :class:`MinuteBuffer` from a buffer hash's fields (as HGETALL returns them)."""
    minute, deployment, version, status = parse_buffer_key(key)
    values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in fields.items()}
    histogram = [0] * BUCKET_COUNT
    for name, count in values.items():
        if name.startswith("b"):
            index = int(name[1:])
            if not 0 <= index < BUCKET_COUNT:
                raise ValueError(f"metrics buffer {key!r} has out-of-range bucket field {name!r}")
            histogram[index] = count
    return MinuteBuffer(
        key=key,
        minute=minute,
        deployment=deployment,
        version=version,
        status=status,
        count=values.get("count", 0),
        rows=values.get("rows", 0),
        errors=values.get("errors", 0),
        latency_us_sum=values.get("latency_us_sum", 0),
        histogram=tuple(histogram),
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


def latency_mean_ms(latency_us_sum: int, count: int) -> float | None:
    """Mean latency in ms from a buffer's sum and count (``None`` for no requests)."""
    if count <= 0:
        return None
    return latency_us_sum / count / 1e3


__all__ = [
    "BUCKET_BOUNDS_MS",
    "BUCKET_COUNT",
    "BUFFER_TTL_S",
    "METRICS_DIRTY_KEY",
    "METRICS_KEY_PREFIX",
    "MetricsRecorder",
    "MinuteBuffer",
    "bucket_index",
    "buffer_from_fields",
    "buffer_key",
    "latency_mean_ms",
    "merge_histograms",
    "metrics_buffer_read",
    "metrics_dirty_keys",
    "metrics_mark_clean",
    "parse_buffer_key",
    "percentile_from_histogram",
]
