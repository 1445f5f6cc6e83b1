"""Shadow mirroring: a share of live requests sent again to a candidate, answers compared.

A route's ``shadow`` arm (``gateway.routes``) names the candidate's replicas and the share of
live requests to mirror (basis points). After the live answer has been SENT, the request path
offers a :class:`ShadowJob` to a bounded queue (``shadow_queue_size``; full -> the job is
dropped and counted, never waited for); ``shadow_workers`` tasks take jobs, send the same body
to a shadow replica with a timeout of their own (``shadow_timeout_s``), compare the two
answers (:func:`answers_compare`) and add the result to in-memory cells per deployment, shadow
version and minute. The flush loop writes the cells to Redis in one atomic, replay-safe script
call (``gateway.shadow_reports`` holds the layout and the platform's reader).

So a slow or dead shadow costs a live request nothing: the live answer is out before the job
exists, the queue never blocks, and shadow requests hold at most ``shadow_workers`` upstream
connections. Where the workers run: by default in the gateway's shadow process at idle CPU
priority (:mod:`gateway.shadow_process`, whose :class:`~gateway.shadow_process.ShadowRelay`
the request path offers jobs to), so their CPU (a second upstream call, both answers parsed)
is not taken from live requests; with ``shadow_process=0`` on the gateway's own event loop
(tests/benchmarks/test_shadow_bench.py measures both).

Shadow replicas are balanced but never ejected (``gateway.balancer``): a failure is evidence
about the candidate, counted as an error, not a reason to stop looking.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.routes import MAX_WEIGHT, Route
from gateway.shadow_reports import (
    COUNT_FIELDS,
    MAX_FIELD,
    SHADOW_FLUSH_ID_PREFIX,
    SHADOW_FLUSH_ID_TTL_S,
    SHADOW_TTL_S,
    SUM_FIELDS,
    shadow_key,
)
from gateway.upstream import UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

    from gateway.balancer import Balancer
    from gateway.upstream import UpstreamPool

logger = logging.getLogger("modelyard.gateway")


@dataclass(slots=True)
class ShadowJob:
    """One live request to mirror, with what live answered (compared once the shadow has)."""

    route: Route
    target: bytes
    headers: bytes
    body: bytes
    live_status: int
    live_body: bytes
    live_ms: float


class ShadowCell:
    """The counts of one (deployment, shadow version, minute): the fields of shadow_reports."""

    __slots__ = ("counts", "peak", "sums")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNT_FIELDS, 0)
        self.sums = dict.fromkeys(SUM_FIELDS, 0.0)
        self.peak: float | None = None


@dataclass(slots=True)
class Comparison:
    """What :func:`answers_compare` found in one pair of answers."""

    outcome: str  # "compared" | "shape_mismatch" | "unparsable"
    rows: int = 0
    agree: int = 0
    prob_values: int = 0
    prob_abs_sum: float = 0.0
    prob_abs_max: float | None = None
    prob_mismatch: bool = False


def _probability_rows(value: Any) -> list[list[float]] | None:
    """``probabilities`` as rows of numbers (a flat list is one value per row), else None."""
    if type(value) is not list:
        return None
    rows: list[list[float]] = []
    for row in value:
        cells = row if type(row) is list else [row]
        for cell in cells:
            kind = type(cell)
            if kind is not float and kind is not int:  # type(): a bool is no probability
                return None
        rows.append(cells)
    return rows


def answers_compare(live_body: bytes, shadow_body: bytes) -> Comparison:
    """Compare two success answers: ``predictions`` element-wise, ``probabilities`` value by
    value when both carry rows of the same shape.

    Plain loops: this runs on the gateway's event loop for every mirrored request, and for the
    usual few rows they cost a third of what generators, zip(strict) and sum/max did."""
    try:
        live, shadow = json.loads(live_body), json.loads(shadow_body)
    except (ValueError, UnicodeDecodeError):
        return Comparison("unparsable")
    if type(live) is not dict or type(shadow) is not dict:
        return Comparison("unparsable")
    live_predictions, shadow_predictions = live.get("predictions"), shadow.get("predictions")
    if type(live_predictions) is not list or type(shadow_predictions) is not list:
        return Comparison("unparsable")
    count = len(live_predictions)
    if count != len(shadow_predictions):
        return Comparison("shape_mismatch")
    agree = 0
    for index in range(count):
        if live_predictions[index] == shadow_predictions[index]:
            agree += 1
    result = Comparison("compared", rows=count, agree=agree)
    if "probabilities" not in live and "probabilities" not in shadow:
        return result
    live_p = _probability_rows(live.get("probabilities"))
    shadow_p = _probability_rows(shadow.get("probabilities"))
    if live_p is None or shadow_p is None or len(live_p) != len(shadow_p):
        result.prob_mismatch = True
        return result
    values, total, peak = 0, 0.0, -1.0
    for row_a, row_b in zip(live_p, shadow_p):  # noqa: B905 -- lengths checked above
        if len(row_a) != len(row_b):
            result.prob_mismatch = True
            return result
        for index in range(len(row_a)):
            diff = abs(row_a[index] - row_b[index])
            total += diff
            if diff > peak:
                peak = diff
        values += len(row_a)
    result.prob_values, result.prob_abs_sum = values, total
    result.prob_abs_max = peak if values else None
    return result


class ShadowBook:
    """The cells and per-deployment counters of shadow work, and their flush to Redis.

    Both the in-process :class:`ShadowMirror` and the gateway's :class:`ShadowRelay` (which
    counts only what it drops; its process compares and flushes the rest) keep one."""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, int, int], ShadowCell] = {}
        # A batch whose write failed, with its flush id: sent again as it is (see flush).
        self._unsent: tuple[str, dict[tuple[str, int, int], ShadowCell]] | None = None
        self._script: AsyncScript | None = None
        # Per deployment: mirrored, dropped (queue full), errors; for /metrics and /healthz.
        self._counters: dict[str, list[int]] = {}

    @property
    def counters(self) -> dict[str, list[int]]:
        return self._counters

    def totals(self) -> tuple[int, int, int]:
        """Mirrored, dropped and errors over every deployment since start."""
        counters = self.counters.values()
        mirrored = sum(c[0] for c in counters)
        dropped = sum(c[1] for c in counters)
        return mirrored, dropped, sum(c[2] for c in counters)

    def _count(self, deployment: str, index: int) -> None:
        counts = self._counters.get(deployment)
        if counts is None:
            counts = self._counters[deployment] = [0, 0, 0]
        counts[index] += 1

    def _cell(self, route: Route) -> ShadowCell:
        assert route.shadow is not None
        key = (route.deployment, route.shadow.version, int(time.time() // 60))
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = ShadowCell()
        return cell

    def _drop(self, route: Route) -> None:
        self._count(route.deployment, 1)
        self._cell(route).counts["dropped"] += 1

    def routes_changed(self, routes: dict[str, Route]) -> None:
        """Follow a new route table (the gateway calls it on every swap, as the balancer's)."""

    async def flush(self, client: redis.asyncio.Redis) -> int:
        """Write every cell in one script call; returns how many cells were written.

        Replay-safe like the metric buffers: each batch has an id that Redis remembers (SET NX)
        in the same atomic call, and a batch whose write failed is sent again with the SAME id,
        so a write that Redis applied but whose answer was lost is not counted twice. Cells
        filled meanwhile go in the next batch.
        """
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_FLUSH_LUA)
        written = 0
        if self._unsent is None and self._cells:
            self._unsent = (uuid.uuid4().hex, self._cells)
            self._cells = {}
        if self._unsent is not None:
            flush_id, cells = self._unsent
            await self._script(keys=[SHADOW_FLUSH_ID_PREFIX + flush_id], args=_script_args(cells))
            self._unsent = None
            written += len(cells)
        if self._cells:  # filled while a failed batch waited: a batch of its own, now
            written += await self.flush(client)
        return written


class ShadowMirror(ShadowBook):
    """The bounded queue, its workers and the cells they fill: the shadow's work on one event
    loop (the gateway's with ``shadow_process=0``, else :mod:`gateway.shadow_process`'s)."""

    def __init__(
        self,
        *,
        balancer: Balancer,
        queue_size: int,
        workers: int,
        timeout_s: float,
        draw: Any = random.random,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.balancer = balancer
        self.queue_size = max(1, queue_size)
        self.worker_count = max(1, workers)
        self.timeout_s = timeout_s
        self._draw = draw
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._pool: UpstreamPool | None = None
        # Jobs finished (compared, failed or dropped): what the relay's bound is freed by.
        self.done = 0
        self._on_done = on_done
        # Per deployment, the shadow arm its current route mirrors to, as (version, slot);
        # None until the first route table: then no job is judged stale.
        self._arms: dict[str, tuple[int, str]] | None = None

    def start(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._workers = [
            asyncio.create_task(self._work(), name=f"gateway-shadow-{index}")
            for index in range(self.worker_count)
        ]

    async def close(self) -> None:
        """Stop the workers; mirrored requests still in flight are abandoned (never counted)."""
        for task in self._workers:
            task.cancel()
        if self._workers:
            # Bounded, as the gateway's whole shutdown is: a worker stuck in a call that
            # ignores its cancel must not keep the process from ending.
            await asyncio.wait(self._workers, timeout=5)
        self._workers = []

    def wanted(self, route: Route) -> bool:
        """Whether this live request of ``route`` is to be mirrored (a draw at the weight)."""
        shadow = route.shadow
        return shadow is not None and self._draw() * MAX_WEIGHT < shadow.weight

    def offer(self, job: ShadowJob) -> bool:
        """Queue ``job`` without waiting; a full queue drops it (counted). True if queued."""
        assert job.route.shadow is not None and self._queue is not None
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop(job.route)
            self._finished()
            return False
        return True

    def routes_changed(self, routes: dict[str, Route]) -> None:
        self._arms = {
            name: (route.shadow.version, route.shadow.slot)
            for name, route in routes.items()
            if route.shadow is not None
        }

    def _stale(self, job: ShadowJob) -> bool:
        """Whether ``job`` was queued for a shadow its deployment's route no longer has.

        A shadow promoted to a canary (or aborted, or replaced) leaves up to a queue of jobs
        behind; sent anyway, they land on what now answers users -- as a canary, up to
        ``workers`` mirrored requests at once beside its share, which made a healthy canary's
        median 25 % slower than its baseline and the judge abort it (reproduced under load).
        """
        if self._arms is None:
            return False
        shadow = job.route.shadow
        assert shadow is not None
        return self._arms.get(job.route.deployment) != (shadow.version, shadow.slot)

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def _finished(self) -> None:
        self.done += 1
        if self._on_done is not None:
            self._on_done()

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                if self._stale(job):
                    self._drop(job.route)  # counted as any job the shadow never saw
                else:
                    await self._mirror(job)
            except Exception:
                # One bad answer must not stop the worker: later jobs still get compared.
                logger.exception("shadow comparison failed for %r", job.route.deployment)
            finally:
                self._finished()

    async def _mirror(self, job: ShadowJob) -> None:
        assert self._pool is not None
        route = job.route
        replicas = self.balancer.replica_set(route, "shadow")
        replica = replicas.choose()
        if replica is None:  # a route whose shadow lists nothing is refused by validate_route
            return
        self._count(route.deployment, 0)
        started = time.perf_counter()
        replica.begin()
        status: int | None = None
        failure = None
        try:
            response = await self._pool.post(
                replica.upstream,
                job.target,
                job.headers,
                job.body,
                asyncio.get_running_loop().time() + self.timeout_s,
            )
            status, body = response.status, response.body
        except UpstreamTimeout:
            failure = "errors_timeout"
        except UpstreamError:
            failure = "errors_connect"
        finally:
            replica.end()
        shadow_ms = (time.perf_counter() - started) * 1e3
        cell = self._cell(route)
        counts = cell.counts
        counts["mirrored"] += 1
        if failure is None and status is not None and status >= 500:
            failure = "errors_status"
        if failure is not None:
            counts["errors"] += 1
            counts[failure] += 1
            self._count(route.deployment, 2)
            return
        assert status is not None
        if not (200 <= status < 300 and 200 <= job.live_status < 300):
            if status != job.live_status:
                counts["status_differs"] += 1
            return
        comparison = answers_compare(job.live_body, body)
        if comparison.outcome != "compared":
            counts[comparison.outcome] += 1
            return
        counts["compared"] += 1
        counts["rows"] += comparison.rows
        counts["agree"] += comparison.agree
        cell.sums["live_ms_sum"] += job.live_ms
        cell.sums["shadow_ms_sum"] += shadow_ms
        if comparison.prob_mismatch:
            counts["prob_mismatch"] += 1
        elif comparison.prob_values:
            counts["prob_values"] += comparison.prob_values
            cell.sums["prob_abs_sum"] += comparison.prob_abs_sum
            peak = comparison.prob_abs_max
            if peak is not None and (cell.peak is None or peak > cell.peak):
                cell.peak = peak


def _script_args(cells: dict[tuple[str, int, int], ShadowCell]) -> list[str | int | float]:
    args: list[str | int | float] = [SHADOW_TTL_S, SHADOW_FLUSH_ID_TTL_S]
    for (deployment, version, minute), cell in cells.items():
        counts = [(name, count) for name, count in cell.counts.items() if count]
        sums = [(name, repr(total)) for name, total in cell.sums.items() if total]
        args += (shadow_key(deployment, version, minute), len(counts), len(sums))
        args.append("" if cell.peak is None else repr(cell.peak))
        for name, count in counts:
            args += (name, count)
        for name, text in sums:
            args += (name, text)
    return args


# KEYS[1] = this batch's flush id; ARGV = key ttl, id ttl, then per key: key, number of
# HINCRBY fields, number of HINCRBYFLOAT fields, the peak ('' = none), then field, value pairs.
_FLUSH_LUA = (
    """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', tonumber(ARGV[2])) then
  return 0  -- applied before: a replay whose first answer was lost
end
local ttl = tonumber(ARGV[1])
local i = 3
while i <= #ARGV do
  local key, ints, floats, peak = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  i = i + 4
  for _ = 1, ints do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  for _ = 1, floats do
    redis.call('HINCRBYFLOAT', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  if peak ~= '' then
    local current = redis.call('HGET', key, '"""
    + MAX_FIELD
    + """')
    if (not current) or tonumber(peak) > tonumber(current) then
      redis.call('HSET', key, '"""
    + MAX_FIELD
    + """', peak)
    end
  end
  redis.call('EXPIRE', key, ttl)
end
return 1
"""
)
