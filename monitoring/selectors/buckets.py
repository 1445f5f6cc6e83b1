"""Roll-ups merged per chart bucket and version, in SQL, for the deployment dashboard.

``metrics.traffic_by_version`` merges roll-ups in Python, which is right for one window summary
but far too slow for a chart over 30 days of minute rows (~130k rows x 149 histogram
counts). Here the merge runs in SQL: one pass grouped by ``date_bin`` bucket and version,
summing every histogram bucket by subscript (no ``unnest``: that multiplies the rows by
149). Closed buckets never change once the gateway's buffers for them have expired, so
each bucket's merged row is cached and a refresh only recomputes the buckets still open.
The cold merge of a long window takes seconds, so a beat task (``monitoring.dashboard_cache_warm``,
every minute) fills the cache before anyone asks; a request then merges the open buckets only.
Percentiles come from ``gateway.metrics.percentile_from_histogram`` — the very function
``metrics.TrafficSummary`` uses — so the numbers match the API's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.core.cache import cache
from django.db import connection
from django.db.models import Exists, OuterRef
from django.utils import timezone

from deployments.models import Deployment
from gateway.metrics import BUCKET_COUNT, BUFFER_TTL_S, percentile_from_histogram
from monitoring.models import MetricRollup
from monitoring.selectors.windows import WINDOWS, window_range

# A bucket is cached once it ended this long ago: the roll-up runs every few seconds.
_SETTLE = timedelta(minutes=5)
# A closed bucket younger than the gateway buffer TTL could still receive a late roll-up
# (e.g. after a worker outage): cache it briefly. Older buckets cannot change any more
# (downsampling to hours keeps their sums), so they stay until they leave their window:
# a fixed TTL would expire a whole window's buckets at once and hand a user the cold merge.
_YOUNG_TTL = 120
_OLD_TTL_MARGIN = 3600
# What the warm task fills (monitoring.tasks.dashboard_cache_warm_task): the windows whose cold
# merge is slow. A cold 1h window reads at most 60 minute rows a version.
WARM_WINDOWS = ("24h", "7d", "30d")
_CACHE_VERSION = 3
CHART_QUANTILES = (0.50, 0.95, 0.99)

_HIST_SUMS = ", ".join(f"SUM(histogram[{i}])" for i in range(1, BUCKET_COUNT + 1))
# deployment_id + start use the (deployment, start) index; date_bin aligns buckets to the
# epoch so the same bucket has the same key in every request.
# Only module constants are formatted into the text; values go as parameters.
_BUCKETS_SQL = f"""
SELECT date_bin(make_interval(secs => %(bucket)s), start, TIMESTAMPTZ '1970-01-01 00:00+00')
           AS bucket,
       version,
       SUM(count)::bigint,
       SUM(rows)::bigint,
       SUM(CASE WHEN status BETWEEN 200 AND 299 THEN rows ELSE 0 END)::bigint,
       SUM(errors)::bigint,
       SUM(CASE WHEN status BETWEEN 400 AND 499 THEN count ELSE 0 END)::bigint,
       SUM(latency_us_sum)::bigint,
       {_HIST_SUMS}
FROM monitoring_metricrollup
WHERE deployment_id = %(deployment)s AND start >= %(start)s AND start < %(end)s
  AND cardinality(histogram) = {BUCKET_COUNT}
GROUP BY 1, 2
ORDER BY 1, 2
"""  # noqa: S608


@dataclass
class Cell:
    """Roll-ups of one version in one bucket, merged."""

    requests: int
    rows: int
    predictions: int
    errors: int
    client_errors: int
    latency_us_sum: int
    histogram: np.ndarray
    # p50/p95/p99 once computed: a cached bucket keeps them, so a refresh does not redo them.
    percentiles: dict[float, float | None] | None = None

    def add(self, other: Cell) -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.predictions += other.predictions
        self.errors += other.errors
        self.client_errors += other.client_errors
        self.latency_us_sum += other.latency_us_sum
        self.histogram = self.histogram + other.histogram
        self.percentiles = None

    def copy(self) -> Cell:
        return Cell(
            self.requests,
            self.rows,
            self.predictions,
            self.errors,
            self.client_errors,
            self.latency_us_sum,
            self.histogram.copy(),
        )

    def percentile_ms(self, q: float) -> float | None:
        if self.percentiles is not None and q in self.percentiles:
            return self.percentiles[q]
        return percentile_from_histogram(self.histogram.tolist(), q)

    def with_chart_percentiles(self) -> Cell:
        counts = self.histogram.tolist()
        self.percentiles = {q: percentile_from_histogram(counts, q) for q in CHART_QUANTILES}
        return self

    def packed(self) -> list[Any]:
        """A compact, JSON-safe form for the cache (the cache never holds pickles): the
        histogram's non-zero buckets only (a latency distribution fills a few dozen of 149)."""
        # Only cells fresh from SQL are cached, and they have them (add and copy drop them).
        if self.percentiles is None:
            raise ValueError("a cell is packed with its chart percentiles")
        nonzero = np.flatnonzero(self.histogram)
        return [
            self.requests,
            self.rows,
            self.predictions,
            self.errors,
            self.client_errors,
            self.latency_us_sum,
            nonzero.tolist(),
            self.histogram[nonzero].tolist(),
            [[q, value] for q, value in self.percentiles.items()],
        ]

    @classmethod
    def unpacked(cls, packed: list[Any]) -> Cell:
        requests, rows, predictions, errors, client_errors, latency, index, values, percentiles = (
            packed
        )
        histogram = np.zeros(BUCKET_COUNT, dtype=np.int64)
        histogram[np.asarray(index, dtype=np.intp)] = np.asarray(values, dtype=np.int64)
        return cls(
            requests,
            rows,
            predictions,
            errors,
            client_errors,
            latency,
            histogram,
            {q: value for q, value in percentiles},
        )


@dataclass
class Buckets:
    """Merged roll-ups of a window: ``cells[bucket_start][version]``."""

    window: str
    start: datetime
    end: datetime
    bucket_seconds: int
    starts: list[datetime]
    cells: dict[datetime, dict[int, Cell]]

    @property
    def versions(self) -> list[int]:
        return sorted({v for by_version in self.cells.values() for v in by_version})

    def totals(self) -> dict[int, Cell]:
        """Each version over the whole window."""
        totals: dict[int, Cell] = {}
        for by_version in self.cells.values():
            for version, cell in by_version.items():
                if version in totals:
                    totals[version].add(cell)
                else:
                    totals[version] = cell.copy()
        return totals


def _query(
    deployment_id: int, start: datetime, end: datetime, bucket: int
) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            _BUCKETS_SQL,
            {"deployment": deployment_id, "start": start, "end": end, "bucket": bucket},
        )
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def _cells_from_rows(rows: list[tuple[Any, ...]]) -> dict[datetime, dict[int, Cell]]:
    cells: dict[datetime, dict[int, Cell]] = {}
    for row in rows:
        bucket, version, requests, nrows, predictions, errors, client, lat = row[:8]
        cells.setdefault(bucket, {})[version] = Cell(
            requests=requests,
            rows=nrows,
            predictions=predictions,
            errors=errors,
            client_errors=client,
            latency_us_sum=lat,
            histogram=np.asarray(row[8:], dtype=np.int64),
        ).with_chart_percentiles()
    return cells


def _key(deployment: Deployment, bucket: int, start: datetime) -> str:
    # created_at too: a recreated database reuses ids, and must not find the old buckets.
    born = int(deployment.created_at.timestamp() * 1e6)
    return (
        f"ui:rollup-bucket:{_CACHE_VERSION}:{deployment.pk}.{born}:{bucket}:"
        f"{int(start.timestamp())}"
    )


def rollup_buckets(
    *,
    deployment: Deployment,
    window: str,
    now: datetime | None = None,
    refresh_young: bool = False,
) -> Buckets:
    """Roll-ups of ``window`` merged per chart bucket and version (closed buckets cached).

    ``refresh_young`` (the warm task) merges the closed buckets younger than the gateway
    buffer TTL again even when cached, and caches them anew: run more often than
    ``_YOUNG_TTL``, it keeps them from ever expiring in front of a user.
    """
    start, end, bucket = window_range(window, now=now)
    step = timedelta(seconds=bucket)
    starts: list[datetime] = []
    cursor = start
    while cursor < end:
        starts.append(cursor)
        cursor += step
    settled = [s for s in starts if s + step <= end - _SETTLE]
    young_limit = end - timedelta(seconds=BUFFER_TTL_S)
    keys = {s: _key(deployment, bucket, s) for s in settled}
    cached = cache.get_many(list(keys.values())) if keys else {}
    if refresh_young:
        # Also the buckets that turned old within the last _YOUNG_TTL: they may still hold
        # a short-lived young entry; merged again now, they are cached as old.
        redo = young_limit - timedelta(seconds=_YOUNG_TTL)
        cached = {
            keys[s]: cached[keys[s]] for s in settled if keys[s] in cached and s + step <= redo
        }
    cells: dict[datetime, dict[int, Cell]] = {}
    missing = [s for s in settled if keys[s] not in cached]
    for s in settled:
        if keys[s] in cached and cached[keys[s]]:
            cells[s] = {int(v): Cell.unpacked(p) for v, p in cached[keys[s]].items()}
    # One query over the span from the first missing bucket to the end: the open buckets
    # are always recomputed, and missing closed ones are usually recent too.
    first = (
        missing[0] if missing else (starts[len(settled)] if len(settled) < len(starts) else None)
    )
    if first is not None:
        fresh = _cells_from_rows(_query(deployment.pk, first, end, bucket))
        # Old buckets grouped by expiry: each is kept until it has left the window (plus a
        # margin for clock skew between web and worker), so they expire one by one.
        to_cache: dict[int, dict[str, Any]] = {}
        young: dict[str, Any] = {}
        span = WINDOWS[window].seconds
        for s in starts:
            if s < first:
                continue
            if s in fresh:
                cells[s] = fresh[s]
            if s in keys and keys[s] not in cached:
                # An empty bucket is cached too (as {}), so quiet periods cost nothing.
                packed = {str(v): c.packed() for v, c in fresh.get(s, {}).items()}
                if s + step <= young_limit:
                    # Rounded up to an eighth of the window: a few set_many calls, not one
                    # per bucket; a bucket outliving its window a little costs only memory.
                    left = (s + step - end).total_seconds() + span + _OLD_TTL_MARGIN
                    ttl = max(math.ceil(left / (span // 8)) * (span // 8), _YOUNG_TTL)
                    to_cache.setdefault(ttl, {})[keys[s]] = packed
                else:
                    young[keys[s]] = packed
        for ttl, entries in to_cache.items():
            cache.set_many(entries, timeout=ttl)
        if young:
            cache.set_many(young, timeout=_YOUNG_TTL)
    return Buckets(
        window=window,
        start=start,
        end=end,
        bucket_seconds=bucket,
        starts=starts,
        cells=cells,
    )


@dataclass
class WarmResult:
    deployments: int
    windows: int
    seconds: float


def deployments_with_traffic(*, since: datetime) -> list[Deployment]:
    """Deployments with a roll-up since ``since`` (one EXISTS probe each on the
    (deployment, start) index, not a scan of the roll-ups)."""
    recent = MetricRollup.objects.filter(deployment=OuterRef("pk"), start__gte=since)
    return list(
        Deployment.objects.filter(Exists(recent)).only("pk", "name", "created_at").order_by("pk")
    )


def dashboard_cache_warm(*, now: datetime | None = None) -> WarmResult:
    """Fill the closed-bucket cache of every deployment with traffic for ``WARM_WINDOWS``, so
    no dashboard request pays the cold merge. Idempotent: it writes what a request would.

    Only closed buckets are cached; the open ones are still merged by each request, so
    roll-ups written after a warm show up at once.
    """
    started = time.perf_counter()
    now = now or timezone.now()
    longest = max(WINDOWS[w].seconds for w in WARM_WINDOWS)
    deployments = deployments_with_traffic(since=now - timedelta(seconds=longest))
    for deployment in deployments:
        for window in WARM_WINDOWS:
            rollup_buckets(deployment=deployment, window=window, now=now, refresh_young=True)
    return WarmResult(
        deployments=len(deployments),
        windows=len(deployments) * len(WARM_WINDOWS),
        seconds=time.perf_counter() - started,
    )


def series(buckets: Buckets) -> dict[int, dict[str, list[Any]]]:
    """Per version, the chart series: bucket times and per-bucket figures (None = no data)."""
    out: dict[int, dict[str, list[Any]]] = {}
    seconds = buckets.bucket_seconds
    for version in buckets.versions:
        points: dict[str, list[Any]] = {
            k: [] for k in ("t", "p50", "p95", "p99", "rps", "error_rate", "requests")
        }
        for s in buckets.starts:
            cell = buckets.cells.get(s, {}).get(version)
            points["t"].append(s)
            if cell is None or cell.requests == 0:
                for k in ("p50", "p95", "p99", "error_rate"):
                    points[k].append(None)
                points["rps"].append(0.0)
                points["requests"].append(0)
                continue
            points["p50"].append(cell.percentile_ms(0.50))
            points["p95"].append(cell.percentile_ms(0.95))
            points["p99"].append(cell.percentile_ms(0.99))
            points["rps"].append(cell.requests / seconds)
            points["error_rate"].append(cell.errors / cell.requests)
            points["requests"].append(cell.requests)
        out[version] = points
    return out


def error_rate_last_hour(deployment_ids: list[int]) -> dict[int, float | None]:
    """5xx share of each deployment's requests over the last hour (one query for all)."""
    if not deployment_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT deployment_id, SUM(count), SUM(errors) FROM monitoring_metricrollup "
            "WHERE deployment_id = ANY(%s) AND start >= %s GROUP BY 1",
            [deployment_ids, timezone.now() - timedelta(hours=1)],
        )
        return {pk: (errors / count if count else None) for pk, count, errors in cursor.fetchall()}
