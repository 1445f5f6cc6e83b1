"""The dashboard cache warm (monitoring.dashboard_cache_warm): after it, a dashboard
request merges only the open buckets in SQL; the closed ones come from the cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config.celery_app import app
from deployments.services import deployment_create
from gateway.metrics import BUCKET_COUNT
from monitoring.models import MetricRollup
from monitoring.selectors import buckets as data
from monitoring.selectors import traffic_by_version
from monitoring.tasks import dashboard_cache_warm_task
from tests.frontend.conftest import login  # noqa: F401 - fixture
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

# Queries of one data-endpoint request once warm (11 measured): session, user, deployment, live
# slot, the one bucket merge (open buckets only), cost inputs, drift, the prediction profile,
# the quality series (one grouped query for every version) and the latest data-quality window.
# What matters: it does not grow with the window, its number of buckets or of versions.
MOST_QUERIES = 11


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def _row(deployment, *, version: int, start, count: int = 10):
    histogram = [0] * BUCKET_COUNT
    histogram[60] = count
    return MetricRollup(
        deployment=deployment,
        version=version,
        status=200,
        start=start,
        count=count,
        rows=count,
        latency_us_sum=count * 5000,
        histogram=histogram,
    )


def _history(deployment, *, days: int = 29, every_hours: int = 3) -> None:
    """Rows spread over the 30d window (besides the fixture's last half hour)."""
    now = timezone.now().replace(second=0, microsecond=0)
    MetricRollup.objects.bulk_create(
        _row(deployment, version=1, start=now - timedelta(hours=h, minutes=37))
        for h in range(1, days * 24, every_hours)
    )


def _bucket_queries(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "date_bin" in q["sql"]]


def _cached_entries(deployment, window: str) -> dict:
    start, end, bucket = data.window_range(window)
    keys = []
    cursor = start
    while cursor < end:
        keys.append(data._key(deployment, bucket, cursor))
        cursor += timedelta(seconds=bucket)
    return cache.get_many(keys)


def test_after_warming_a_dashboard_request_merges_only_the_open_buckets(ops, login):  # noqa: F811
    deployment = ops["deployment"]
    _history(deployment)
    result = data.dashboard_cache_warm()
    assert (result.deployments, result.windows) == (1, len(data.WARM_WINDOWS))
    # A row slipped into an old, closed bucket behind the cache's back: a request that reads
    # the closed buckets from the cache does not see it; a cold merge would.
    old = timezone.now() - timedelta(days=3)
    _row(deployment, version=1, start=old, count=1000).save()
    client = login(ops["operator"])
    for window in data.WARM_WINDOWS:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/deployments/{deployment.name}/dashboard/", {"window": window})
        assert response.status_code == 200
        assert len(_bucket_queries(queries)) == 1, window
        assert len(queries.captured_queries) <= MOST_QUERIES, [
            q["sql"][:80] for q in queries.captured_queries
        ]
        served = data.rollup_buckets(deployment=deployment, window=window).totals()[1].requests
        start, end, _ = data.window_range(window)
        merged = traffic_by_version(deployment=deployment, start=start, end=end)[1].requests
        if window == "24h":  # the row is older than the window: nobody counts it
            assert served == merged
        else:
            assert merged - served == 1000, window


def test_warming_twice_is_harmless_and_matches_the_selector(ops):  # noqa: F811
    deployment = ops["deployment"]
    _history(deployment)
    now = timezone.now()
    data.dashboard_cache_warm(now=now)
    first = {w: _cached_entries(deployment, w) for w in data.WARM_WINDOWS}
    with CaptureQueriesContext(connection) as queries:
        again = data.dashboard_cache_warm(now=now)
    assert again.deployments == 1
    # One EXISTS probe, then one merge a window (of the open and young buckets only).
    assert len(_bucket_queries(queries)) == len(data.WARM_WINDOWS)
    assert len(queries.captured_queries) == 1 + len(data.WARM_WINDOWS)
    for window in data.WARM_WINDOWS:
        assert _cached_entries(deployment, window) == first[window]
        assert first[window], window
        buckets = data.rollup_buckets(deployment=deployment, window=window)
        expected = traffic_by_version(deployment=deployment, start=buckets.start, end=buckets.end)
        totals = buckets.totals()
        assert set(totals) == set(expected) == {1, 2}
        for version, summary in expected.items():
            assert totals[version].requests == summary.requests
            assert totals[version].percentile_ms(0.99) == pytest.approx(summary.percentile_ms(0.99))


def test_a_deployment_without_traffic_costs_nothing(ops):  # noqa: F811
    deployment = ops["deployment"]
    quiet = deployment_create(
        name=f"{deployment.name}-quiet",
        model=deployment.model,
        environment="staging",
        actor=ops["operator"],
    )
    # Traffic older than the longest window is no traffic either.
    _row(quiet, version=1, start=timezone.now() - timedelta(days=40)).save()
    with CaptureQueriesContext(connection) as queries:
        result = data.dashboard_cache_warm()
    assert result.deployments == 1  # the busy one only
    assert len(_bucket_queries(queries)) == len(data.WARM_WINDOWS)
    assert all(f"= {quiet.pk} AND" not in sql for sql in _bucket_queries(queries))
    for window in data.WARM_WINDOWS:
        assert _cached_entries(quiet, window) == {}
        assert _cached_entries(deployment, window)
    MetricRollup.objects.filter(deployment=deployment).delete()
    cache.clear()
    with CaptureQueriesContext(connection) as queries:
        assert data.dashboard_cache_warm().deployments == 0
    assert len(queries.captured_queries) == 1  # the EXISTS probe, nothing else
    assert _cached_entries(deployment, "30d") == {}


def test_rollups_written_after_warming_still_show_up(ops):  # noqa: F811
    deployment = ops["deployment"]
    _history(deployment, days=2)
    data.dashboard_cache_warm()
    before = {
        w: data.rollup_buckets(deployment=deployment, window=w).totals()[1].requests
        for w in data.WARM_WINDOWS
    }
    # Into the open bucket of every window: never cached, so the next request has it.
    now = timezone.now().replace(second=0, microsecond=0)
    _row(deployment, version=1, start=now, count=7).save()
    for window in data.WARM_WINDOWS:
        totals = data.rollup_buckets(deployment=deployment, window=window).totals()
        assert totals[1].requests == before[window] + 7, window
    # A late roll-up (a worker outage) into a closed bucket younger than the buffers' TTL:
    # cached briefly, and the next warm merges it again, so it shows within a minute.
    late = now - timedelta(minutes=40)
    _row(deployment, version=3, start=late, count=5).save()
    assert 3 not in data.rollup_buckets(deployment=deployment, window="24h").totals()
    data.dashboard_cache_warm()
    for window in data.WARM_WINDOWS:
        totals = data.rollup_buckets(deployment=deployment, window=window).totals()
        assert totals[3].requests == 5, window
        assert totals[1].requests == before[window] + 7, window


def test_old_buckets_stay_cached_until_they_leave_their_window(ops):  # noqa: F811
    deployment = ops["deployment"]
    _history(deployment)
    data.dashboard_cache_warm()
    client = cache._cache.get_client()
    start, end, bucket = data.window_range("30d")
    ttls = {}
    cursor = start
    while cursor + timedelta(seconds=bucket) < end - timedelta(hours=12):
        key = cache.make_and_validate_key(data._key(deployment, bucket, cursor))
        ttls[cursor] = client.ttl(key)
        cursor += timedelta(seconds=bucket)
    span = data.WINDOWS["30d"][0]
    for at, ttl in ttls.items():
        # Not before the bucket has left the window; not much after (an eighth of it).
        leaves = (at + timedelta(seconds=bucket) - end).total_seconds() + span
        assert leaves - 5 <= ttl <= leaves + span // 8 + 3600 + 5, at
    # So they do not all lapse together: the day-old ones outlive the month-old ones by weeks.
    assert max(ttls.values()) - min(ttls.values()) > 20 * 86400


def test_the_task_is_scheduled_routed_to_monitoring_and_warms(ops):  # noqa: F811
    scheduled = {entry["task"]: entry for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    entry = scheduled["monitoring.dashboard_cache_warm"]
    # More often than the young buckets' cache entries live, so they never lapse.
    assert entry["schedule"] < data._YOUNG_TTL
    route = app.amqp.router.route({}, "monitoring.dashboard_cache_warm")
    assert route["queue"].name == "monitoring"
    task = app.tasks["monitoring.dashboard_cache_warm"]
    assert task.acks_late and task.time_limit and task.soft_time_limit
    outcome = dashboard_cache_warm_task.apply().get()
    assert outcome["deployments"] == 1 and outcome["windows"] == len(data.WARM_WINDOWS)
    assert _cached_entries(ops["deployment"], "30d")


def test_the_30d_window_reads_hour_rows_where_minutes_were_downsampled(ops):  # noqa: F811
    # The bucket merge takes every period: retention folds old minute rows into hour rows
    # (deleting the minutes), and hours fit 4 h and 1 h buckets exactly, so the long windows
    # read ~60x fewer rows past the minute retention and count the same.
    from monitoring.services import metrics_downsample

    deployment = ops["deployment"]
    _history(deployment, days=5, every_hours=1)
    now = timezone.now()
    before = {
        w: data.rollup_buckets(deployment=deployment, window=w, now=now) for w in ("7d", "30d")
    }
    assert metrics_downsample(now=now) > 0
    assert MetricRollup.objects.filter(deployment=deployment, period_seconds=3600).exists()
    cache.clear()
    for window, expected in before.items():
        after = data.rollup_buckets(deployment=deployment, window=window, now=now)
        assert after.cells.keys() == expected.cells.keys(), window
        for s, by_version in expected.cells.items():
            for version, cell in by_version.items():
                assert after.cells[s][version].requests == cell.requests
                assert after.cells[s][version].histogram.tolist() == cell.histogram.tolist()


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_warm_on_the_monitoring_queue(ops, live_stack):  # noqa: F811
    import redis

    deployment = ops["deployment"]
    _history(deployment, days=2)
    outcome = dashboard_cache_warm_task.apply_async(expires=300).get(timeout=120)
    assert outcome["deployments"] == 1 and outcome["windows"] == len(data.WARM_WINDOWS)
    # The worker wrote the stack's cache (its own Redis database): every closed bucket of
    # every warmed window is there.
    client = redis.Redis.from_url(live_stack.env["REDIS_URL"])
    for window in data.WARM_WINDOWS:
        start, end, bucket = data.window_range(window)
        closed = []
        cursor = start
        while cursor + timedelta(seconds=bucket) <= end - timedelta(minutes=6):
            closed.append(cache.make_and_validate_key(data._key(deployment, bucket, cursor)))
            cursor += timedelta(seconds=bucket)
        assert closed and client.exists(*closed) == len(closed), window
