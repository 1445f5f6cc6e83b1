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
  the gateway's 503 ``upstream_unavailable`` (no replica of it could be reached) or 504 (it
  did not answer in time). Not
  the gateway's own other 5xx (a 503 with no live slot, a gateway bug's 500), and never a 4xx:
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
    HINCRBY, so the hash holds every count flushed since the hash was created. The flush that
    creates it also sets ``from_empty`` = 1. The roll-up adds ``pg`` = 1 and ``pg.{field}``: what
    the stored row held before this hash's counts were added to it (its *base*, see below). It
    expires :data:`BUFFER_TTL_S` after its last flush.

``modelyard:metrics:dirty`` (sorted set)
    member = a buffer key above; score = how many flushes have touched it (ZINCRBY 1 in the same
    atomic script call as the HINCRBYs), so the score changes whenever the hash does.

``modelyard:metrics-flush:{flush id}`` (string, TTL :data:`BUFFER_TTL_S`)
    One per applied flush batch, set by the same script call (SET NX): a batch whose answer was
    lost (a timeout while Redis stalled, which Redis then ran anyway) is sent again under the
    same id and applied at most once. Outside the buffers' prefix so no scan of buffers sees it.

How the roll-up moves buffers into PostgreSQL idempotently, without losing a minute
-----------------------------------------------------------------------------------
1. ``metrics_dirty_keys(client)`` -> ``[(key, score), ...]``.
2. ``metrics_buffer_read(client, key)`` -> a :class:`MinuteBuffer` (``None`` if it expired).
3. A buffer with ``from_empty`` but no base yet has never been rolled up: the roll-up reads the
   stored row (zeros if none) and records it as the base with :func:`metrics_buffer_set_base`
   (set once; the script answers the hash as it is then). The stored row never includes any of
   this hash's counts yet, so row = base + hash is the complete total of the minute even after
   Redis lost an earlier hash of it (a restart): the first counts are kept, the new ones added.
4. Upsert the row with :meth:`MinuteBuffer.total` (base + hash) as ABSOLUTE values
   (``ON CONFLICT ... DO UPDATE SET count = EXCLUDED.count``): running the roll-up twice
   writes the same row. A hash without ``from_empty`` (written before flushes set it) has no
   base: it is the minute's complete total, as it always was.
5. ``metrics_mark_clean(client, key, score)`` drops the key from the dirty set only if its score
   is unchanged; a flush that landed meanwhile keeps it dirty for the next run. Late flushes
   (a gateway that buffered through a Redis outage) land in the same key and simply make it dirty
   again.

:func:`percentile_from_histogram` turns bucket counts into a latency percentile; the roll-up and
the tests both use it so they agree.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.commands.core import AsyncScript

logger = logging.getLogger(__name__)

METRICS_KEY_PREFIX = "modelyard:metrics:"
METRICS_DIRTY_KEY = "modelyard:metrics:dirty"
FLUSH_ID_KEY_PREFIX = "modelyard:metrics-flush:"
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
        # Batches sent (or about to be) whose application Redis has not confirmed, oldest
        # first. A failed batch is sent again exactly as it was, under its id, before any new
        # cells go: merging it into newer cells would change what its id stands for.
        self._unacked: list[_FlushBatch] = []
        # For GET /metrics (Prometheus counters never go down): everything flushed so far,
        # without the minute.
        self._totals: dict[tuple[str, int, int], _Cell] = {}

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
        """Requests recorded but not confirmed flushed (new cells and unacknowledged batches)."""
        self._fold()
        cells = itertools.chain(
            self._cells.values(), *(batch.cells.values() for batch in self._unacked)
        )
        return sum(cell.count for cell in cells)

    def totals(self) -> dict[tuple[str, int, int], _Cell]:
        """Every request recorded by this process, by (deployment, version, status).

        Built at scrape time from the flushed totals, the unacknowledged batches and the
        pending cells (each request is in exactly one of the three), so recording stays an
        append. Cells dropped while Redis was unreachable are gone from here too.
        """
        self._fold()
        merged: dict[tuple[str, int, int], _Cell] = {}
        unflushed = itertools.chain(
            self._cells.items(), *(batch.cells.items() for batch in self._unacked)
        )
        sources: list[Iterable[tuple[tuple[str, int, int], _Cell]]] = [
            self._totals.items(),
            (((d, v, s), cell) for (_, d, v, s), cell in unflushed),
        ]
        for source in sources:
            for key, cell in source:
                total = merged.get(key)
                if total is None:
                    total = merged[key] = _Cell()
                total.add(cell)
        return merged

    def _count_flushed(self, batch: _FlushBatch) -> int:
        for key, cell in batch.cells.items():
            total_key = (key[1], key[2], key[3])
            total = self._totals.get(total_key)
            if total is None:
                total = self._totals[total_key] = _Cell()
            total.add(cell)
        requests = sum(cell.count for cell in batch.cells.values())
        self.flushed_requests += requests
        return requests

    def _bound_pending(self) -> None:
        """Past ``max_pending_cells`` waiting cells (Redis unreachable), drop the oldest minutes.

        Dropping a cell from an unacknowledged batch keeps its id honest: Redis either applied
        the batch already (the replay is skipped whatever it holds) or applies what is left.
        """
        places = [batch.cells for batch in self._unacked] + [self._cells]
        overflow = sum(len(place) for place in places) - self.max_pending_cells
        if overflow <= 0:
            return
        # Tuple order: oldest minute first, wherever the cell waits.
        waiting = sorted((key, index) for index, place in enumerate(places) for key in place)
        for key, index in waiting[:overflow]:
            del places[index][key]
        self.dropped_cells += overflow
        self._unacked = [batch for batch in self._unacked if batch.cells]
        logger.error(
            "metrics buffer over %d cells while Redis is unreachable; dropped the oldest "
            "(%d dropped so far)",
            self.max_pending_cells,
            self.dropped_cells,
        )

    def _take_batches(self) -> None:
        """Move the pending cells into new batches, each under a fresh flush id."""
        # Swapping the dict is atomic for the event loop: requests finishing while a batch is
        # awaited land in the fresh dict.
        cells, self._cells = self._cells, {}
        items = list(cells.items())
        self._unacked = [
            _FlushBatch(uuid.uuid4().hex, dict(items[start : start + _FLUSH_BATCH_CELLS]))
            for start in range(0, len(items), _FLUSH_BATCH_CELLS)
        ]

    async def flush(self, client: redis.asyncio.Redis) -> int:
        """Add everything recorded since the last flush to the Redis buffers; return requests.

        Applied once: each batch carries a flush id that the script records (SET NX) in the
        same atomic call as its HINCRBYs, so a batch sent again after a timeout -- Redis stalled,
        ran it later, the answer never came -- is skipped, not counted twice. A failed batch is
        kept as it is and sent first next time; new cells wait behind it.

        One Lua call per batch of cells instead of one HINCRBY per field: redis-py spends
        ~20 µs of event-loop time per command, so 30 cells of ~50 buckets each took 40 ms of
        HINCRBYs in a MULTI -- a stall every flush -- against ~2 ms as one script call.
        """
        self._fold()
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_FLUSH_LUA)  # EVALSHA, loads it if missing
        script = self._script
        flushed = 0
        while True:
            if not self._unacked:
                if not self._cells:
                    return flushed
                self._take_batches()
            batch = self._unacked[0]
            try:
                await script(
                    keys=[METRICS_DIRTY_KEY, FLUSH_ID_KEY_PREFIX + batch.flush_id],
                    args=batch.script_args(),
                )
            except BaseException:
                # Maybe applied, maybe not: the id decides when it is sent again.
                self._bound_pending()
                raise
            self._unacked.pop(0)
            flushed += self._count_flushed(batch)


@dataclass(slots=True)
class _FlushBatch:
    """Cells sent in one script call under one id; Redis applies an id at most once."""

    flush_id: str
    cells: dict[CellKey, _Cell]

    def script_args(self) -> list[str | int]:
        args: list[str | int] = [BUFFER_TTL_S, BUFFER_TTL_S]
        for (minute, deployment, version, status), cell in self.cells.items():
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
        return args


# KEYS[1] = the dirty set, KEYS[2] = this batch's flush id key; ARGV = buffer ttl, id ttl, then
# per buffer: key, field count, field, increment, ... The id lives as long as a buffer: past
# that its minute is gone from Redis anyway. Buffer keys travel in ARGV because their number
# varies; Redis Cluster would need them in KEYS (and in one slot), which the MULTI this
# replaces could not offer either.
_FLUSH_LUA = """
if not redis.call('SET', KEYS[2], 1, 'NX', 'EX', tonumber(ARGV[2])) then
  return 0  -- applied before; this is a replay whose first answer was lost
end
local ttl = tonumber(ARGV[1])
local i = 3
while i <= #ARGV do
  local key = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'from_empty', 1)
  end
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


__all__ = [
    "BUCKET_BOUNDS_MS",
    "BUCKET_COUNT",
    "BUFFER_TTL_S",
    "FLUSH_ID_KEY_PREFIX",
    "METRICS_DIRTY_KEY",
    "METRICS_KEY_PREFIX",
    "MetricsRecorder",
    "bucket_index",
    "buffer_key",
    "merge_histograms",
    "percentile_from_histogram",
]
