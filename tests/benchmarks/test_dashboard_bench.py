"""Dashboard benchmark: 30 days of minute roll-ups for 3 versions (~130k rows), then the
deployment page and its chart data endpoint per window, through the Django test client.

Prints per window: (a) the cold first request without warming (every bucket merged in SQL),
(b) the warm task's own time (monitoring.dashboard_cache_warm's share for the window), (c) p50/p95
(ms) of the page and the data endpoint after the warm task ran; then the whole task from an empty
cache and in steady state, the plan of the bucket query, and as baselines measured in the same
run the cold request and the monitoring selector's Python merge of the same window. Asserts the
data, never the speed.

Run: python -m devstack test -- -m benchmark -s tests/benchmarks/test_dashboard_bench.py
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import numpy as np
import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from gateway.metrics import BUCKET_COUNT, BUFFER_TTL_S
from monitoring.models import MetricRollup
from monitoring.selectors import buckets as data
from monitoring.selectors import traffic_by_version
from tests.frontend.conftest import login  # noqa: F401 - fixture
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture

pytestmark = [pytest.mark.benchmark, pytest.mark.django_db]

DAYS = 30
VERSIONS = (1, 2, 3)
RUNS = 20
COLD_RUNS = 3


def _bulk_insert(deployment_id: int) -> int:
    """One row a minute per version for DAYS days, with COPY (the ORM would take minutes)."""
    rng = np.random.default_rng(5)
    end = timezone.now().replace(second=0, microsecond=0)
    minutes = DAYS * 24 * 60
    shapes = {v: rng.integers(0, 6, size=(64, BUCKET_COUNT)) for v in VERSIONS}
    for v in VERSIONS:  # a realistic shape: counts around a latency mode, a tail
        shapes[v][:, : 30 + 5 * v] = 0
        shapes[v][:, 70 + 5 * v :] = 0
    rows = 0
    raw = connection.connection  # the psycopg connection under Django's
    with (
        raw.cursor() as cursor,
        cursor.copy(
            "COPY monitoring_metricrollup (deployment_id, version, status, period_seconds, "
            "start, count, rows, errors, latency_us_sum, histogram, updated_at) FROM STDIN"
        ) as copy,
    ):
        for m in range(minutes):
            start = end - timedelta(minutes=m + 1)
            for v in VERSIONS:
                histogram = shapes[v][m % 64]
                count = int(histogram.sum())
                copy.write_row(
                    (
                        deployment_id,
                        v,
                        200,
                        60,
                        start,
                        count,
                        count,
                        int(m % 7 == 0),
                        count * 4000,
                        histogram.tolist(),
                        end,
                    )
                )
                rows += 1
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE monitoring_metricrollup")
    return rows


def _drop_young(deployment, window: str) -> None:
    start, end, bucket = data.window_range(window)
    young = end - timedelta(seconds=BUFFER_TTL_S)
    cache.delete_many(
        [
            data._key(deployment, bucket, start + timedelta(seconds=bucket * i))
            for i in range(int((end - start).total_seconds() // bucket) + 1)
            if start + timedelta(seconds=bucket * (i + 1)) > young
        ]
    )


def _timed(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _plan(deployment, window: str, *, refresh: bool) -> str:
    """The scan the bucket query uses: over the whole window (cold), or from the last bucket
    (what a warm refresh reads)."""
    start, end, bucket = data.window_range(window)
    if refresh:
        start = end - timedelta(seconds=(end.timestamp() - start.timestamp()) % bucket or bucket)
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + data._BUCKETS_SQL,
            {"deployment": deployment.pk, "start": start, "end": end, "bucket": bucket},
        )
        lines = [row[0] for row in cursor.fetchall()]
    scans = [line.strip().lstrip("-> ").split("  (")[0] for line in lines if "Scan" in line]
    return "; ".join(scans)


def test_dashboard_page_and_chart_endpoint_over_30_days_of_minute_rollups(
    ops,  # noqa: F811
    login,  # noqa: F811
):
    deployment = ops["deployment"]
    MetricRollup.objects.filter(deployment=deployment).delete()
    started = time.perf_counter()
    rows = _bulk_insert(deployment.pk)
    insert_s = time.perf_counter() - started
    assert rows == DAYS * 1440 * len(VERSIONS)
    client = login(ops["operator"])
    page_url = f"/deployments/{deployment.name}/"
    data_url = f"/deployments/{deployment.name}/dashboard/"

    print(f"\n{rows} minute roll-ups inserted in {insert_s:.1f} s (COPY)")
    print("Timings on a shared 2-core machine: noisy; the lead re-measures.")
    header = (
        f"{'window':>6} {'cold data':>10} {'cold page':>10} {'warm task':>10} "
        f"{'data p50':>9} {'data p95':>9} {'page p50':>9} {'page p95':>9} "
        f"{'beat-stop p95':>13} {'baseline':>9} {'p95/cold':>9}"
    )
    print(header)
    plans = {}
    for window in ("24h", "7d", "30d"):
        # (a) cold, no warming: the first request after the cache is empty.
        cold_data = []
        cold_page = []
        for _ in range(COLD_RUNS):
            cache.clear()
            cold_data += _timed(lambda w=window: client.get(data_url, {"window": w}), 1)
            cache.clear()
            cold_page += _timed(lambda w=window: client.get(page_url, {"window": w}), 1)
        # (b) the warm task's share for this window, from an empty cache.
        cache.clear()
        warm_task = _timed(
            lambda w=window: data.rollup_buckets(
                deployment=deployment, window=w, refresh_young=True
            ),
            1,
        )[0]
        # (c) what a user gets while the beat keeps the cache warm.
        data.dashboard_cache_warm()
        response = client.get(data_url, {"window": window})
        assert response.status_code == 200
        html = response.content.decode()
        # Every version has traffic in the window: the charts are drawn from real rows.
        for v in VERSIONS:
            assert f"v{v}: " in html
        data_ms = _timed(lambda w=window: client.get(data_url, {"window": w}), RUNS)
        page_ms = _timed(lambda w=window: client.get(page_url, {"window": w}), RUNS)
        # If the beat stopped: once the young buckets' entries lapse (120 s), the last 6 h
        # are merged in SQL again; the older ones stay cached.
        refresh_ms = _timed(
            lambda w=window: (_drop_young(deployment, w), client.get(data_url, {"window": w})),
            RUNS // 2,
        )
        # Baseline: the monitoring selector's merge of the same rows in Python.
        start, end, _ = data.window_range(window)
        baseline = _timed(
            lambda s=start, e=end: traffic_by_version(deployment=deployment, start=s, end=e), 1
        )[0]
        # The SQL merge and the selector agree on what they count.
        buckets = data.rollup_buckets(deployment=deployment, window=window)
        expected = traffic_by_version(deployment=deployment, start=buckets.start, end=buckets.end)
        totals = buckets.totals()
        for v in VERSIONS:
            assert totals[v].requests == expected[v].requests
            assert totals[v].percentile_ms(0.99) == pytest.approx(expected[v].percentile_ms(0.99))
        plans[window] = (
            _plan(deployment, window, refresh=False),
            _plan(deployment, window, refresh=True),
        )
        cold_p50 = _p(cold_data, 50)
        print(
            f"{window:>6} {cold_p50:>8.0f}ms {_p(cold_page, 50):>8.0f}ms {warm_task:>8.0f}ms "
            f"{_p(data_ms, 50):>7.0f}ms {_p(data_ms, 95):>7.0f}ms "
            f"{_p(page_ms, 50):>7.0f}ms {_p(page_ms, 95):>7.0f}ms {_p(refresh_ms, 95):>11.0f}ms "
            f"{baseline:>7.0f}ms {_p(data_ms, 95) / cold_p50:>9.3f}"
        )
    # The whole task as the beat runs it: from an empty cache (after a Redis flush or on a
    # new install), then steady state (every minute: open and young buckets only).
    cache.clear()
    first = data.dashboard_cache_warm()
    steady = _timed(data.dashboard_cache_warm, 5)
    print(
        f"warm task, all windows: from empty {first.seconds * 1000:.0f} ms; "
        f"steady p50 {_p(steady, 50):.0f} ms, max {max(steady):.0f} ms "
        f"({first.deployments} deployment(s) with traffic)"
    )
    print(f"cold = median of {COLD_RUNS} first requests after a cache clear, no warming")
    print("warm task = this window's share of monitoring.dashboard_cache_warm from an empty cache")
    print(f"data/page p50/p95 = {RUNS} requests each after the warm task ran")
    print("beat-stop = data request once the last 6 h of buckets lapsed (no warm for 2 min)")
    print("baseline = monitoring.selectors.traffic_by_version over the same window (Python merge)")
    print("p95/cold = warm data p95 / cold data median")
    for window, (cold_plan, refresh_plan) in plans.items():
        print(f"plan {window}: cold: {cold_plan} | refresh: {refresh_plan}")
    print(f"median of all warm runs: {statistics.median(data_ms):.0f} ms")
