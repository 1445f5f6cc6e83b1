"""Gateway buffers → minute roll-ups → percentiles, with retention; idempotent throughout."""

from __future__ import annotations

import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import httpx
import numpy as np
import pytest
import uvicorn
from django.utils import timezone

from gateway.app import GatewaySettings, create_app
from gateway.metrics import (
    BUCKET_BOUNDS_MS,
    BUCKET_COUNT,
    METRICS_DIRTY_KEY,
    MetricsRecorder,
    bucket_index,
    percentile_from_histogram,
)
from monitoring.choices import PERIOD_HOUR, PERIOD_MINUTE
from monitoring.models import MetricRollup
from monitoring.services import metrics_downsample, metrics_rollup
from monitoring.tasks import metrics_rollup_task
from tests.gateway.support import (
    DEFAULT_KEY,
    UPSTREAM_SCRIPT,
    Deployments,
    auth,
    free_port,
    start_process,
    wait_http,
)
from tests.monitoring.conftest import flush, minute_ago, utc


def _record(recorder, *, version, status, latencies_ms, now, deployment, rows=1):
    for latency in latencies_ms:
        recorder.record(
            deployment=deployment,
            version=version,
            status=status,
            latency_s=latency / 1e3,
            rows=rows,
            now=now,
        )


def _cells():
    return {
        (r.version, r.status, r.start): (r.count, r.rows, r.errors, r.latency_us_sum, r.histogram)
        for r in MetricRollup.objects.all()
    }


def test_rollup_writes_one_minute_row_per_version_and_status(
    deployment, monitoring_redis, settings
):
    recorder = MetricsRecorder()
    now = minute_ago(2)
    _record(
        recorder,
        deployment=deployment.name,
        version=2,
        status=200,
        latencies_ms=[1.0, 2.0, 3.0],
        now=now,
        rows=4,
    )
    _record(
        recorder,
        deployment=deployment.name,
        version=2,
        status=503,
        latencies_ms=[0.2],
        now=now,
        rows=0,
    )
    _record(
        recorder,
        deployment=deployment.name,
        version=1,
        status=200,
        latencies_ms=[5.0, 5.0],
        now=now + 60,
        rows=1,
    )
    assert flush(recorder, settings.REDIS_URL) == 6

    result = metrics_rollup()

    assert (result.buffers, result.rows_written, result.marked_clean) == (3, 3, 3)
    minute = utc(now // 60 * 60)
    row = MetricRollup.objects.get(version=2, status=200)
    assert (row.start, row.period_seconds) == (minute, PERIOD_MINUTE)
    assert (row.count, row.rows, row.errors) == (3, 12, 0)
    assert row.latency_us_sum == 6000
    assert len(row.histogram) == BUCKET_COUNT
    assert sum(row.histogram) == 3 and row.histogram[bucket_index(2.0)] == 1
    assert MetricRollup.objects.get(version=2, status=503).errors == 1
    assert MetricRollup.objects.get(version=1).start == minute + timedelta(minutes=1)
    assert monitoring_redis.zcard(METRICS_DIRTY_KEY) == 0


def test_running_the_rollup_twice_counts_nothing_twice(deployment, monitoring_redis, settings):
    recorder = MetricsRecorder()
    now = minute_ago(1)
    _record(
        recorder,
        deployment=deployment.name,
        version=2,
        status=200,
        latencies_ms=[1.5] * 10,
        now=now,
    )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup_task.apply().get()
    first = _cells()
    # Redelivered task, and a buffer made dirty again without new requests (as a gateway
    # retrying a flush would): the rows stay exactly as they were.
    metrics_rollup_task.apply().get()
    monitoring_redis.zadd(
        METRICS_DIRTY_KEY, {next(iter(monitoring_redis.scan_iter("modelyard:metrics:1*"))): 99}
    )
    metrics_rollup_task.apply().get()
    assert _cells() == first
    assert MetricRollup.objects.get().count == 10

    # More requests in the same minute: the row becomes the new total, not old + new.
    _record(
        recorder, deployment=deployment.name, version=2, status=200, latencies_ms=[1.5] * 5, now=now
    )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    metrics_rollup()
    assert MetricRollup.objects.get().count == 15


def test_rollup_keeps_a_buffer_dirty_when_a_flush_lands_meanwhile(
    deployment, monitoring_redis, settings
):
    recorder = MetricsRecorder()
    now = minute_ago(1)
    _record(
        recorder, deployment=deployment.name, version=2, status=200, latencies_ms=[1.0], now=now
    )
    flush(recorder, settings.REDIS_URL)
    from gateway.metric_buffers import metrics_dirty_keys, metrics_mark_clean

    [(key, score)] = metrics_dirty_keys(monitoring_redis)
    _record(
        recorder, deployment=deployment.name, version=2, status=200, latencies_ms=[1.0], now=now
    )
    flush(recorder, settings.REDIS_URL)  # score moves on
    assert not metrics_mark_clean(monitoring_redis, key, score)
    metrics_rollup()
    assert MetricRollup.objects.get().count == 2


def test_rollup_skips_unknown_deployments_and_marks_them_clean(
    deployment, monitoring_redis, settings
):
    recorder = MetricsRecorder()
    _record(
        recorder,
        version=1,
        status=200,
        latencies_ms=[1.0],
        now=minute_ago(),
        deployment="gone",
    )
    flush(recorder, settings.REDIS_URL)
    result = metrics_rollup()
    assert (result.rows_written, result.skipped) == (0, 1)
    assert not MetricRollup.objects.exists()
    assert monitoring_redis.zcard(METRICS_DIRTY_KEY) == 0


def test_downsampling_folds_old_minutes_into_their_hour_once(deployment, settings):
    settings.MODELYARD_METRICS_MINUTE_RETENTION_HOURS = 48
    old_hour = (timezone.now() - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    rng = np.random.default_rng(3)
    histograms = []
    for minute in range(0, 60, 7):
        histogram = rng.integers(0, 5, BUCKET_COUNT).tolist()
        histograms.append(histogram)
        MetricRollup.objects.create(
            deployment=deployment,
            version=2,
            status=200,
            start=old_hour + timedelta(minutes=minute),
            count=sum(histogram),
            rows=2 * sum(histogram),
            errors=0,
            latency_us_sum=1000 * sum(histogram),
            histogram=histogram,
        )
    recent = MetricRollup.objects.create(
        deployment=deployment,
        version=2,
        status=200,
        start=timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1),
        count=1,
        histogram=[1] + [0] * (BUCKET_COUNT - 1),
    )
    merged = np.sum(histograms, axis=0)

    assert metrics_downsample() == len(histograms)
    assert metrics_downsample() == 0  # nothing left: a rerun changes nothing

    hour = MetricRollup.objects.get(period_seconds=PERIOD_HOUR)
    assert hour.start == old_hour
    assert hour.count == int(merged.sum()) and hour.rows == 2 * int(merged.sum())
    assert hour.histogram == merged.tolist()
    assert list(MetricRollup.objects.filter(period_seconds=PERIOD_MINUTE)) == [recent]
    # Percentiles over the hour row are those of the minutes it replaced.
    assert percentile_from_histogram(hour.histogram, 0.99) == percentile_from_histogram(
        merged.tolist(), 0.99
    )


# --- the real gateway, the real roll-up, the real API ---------------------------------------


class _InProcessGateway:
    """The gateway app served by uvicorn in a thread, so the test can see its latencies."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.app = create_app(
            GatewaySettings(
                redis_url=redis_url,
                metrics_flush_interval_s=0.2,
                sample_rate=0.0,
                routes_reread_interval_s=0.2,
            )
        )
        self.raw_latencies_ms: list[float] = []
        real_record = self.app.metrics.record

        def record(deployment, version, status, latency_s, rows, *rest):
            # A spy: the real recorder runs, the test keeps the raw value.
            self.raw_latencies_ms.append(latency_s * 1e3)
            real_record(deployment, version, status, latency_s, rows, *rest)

        self.app.metrics.record = record
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "in-process gateway did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True  # the app flushes its metrics one last time
        self.thread.join(15)


@pytest.fixture
def upstream(tmp_path):
    proc = start_process(
        "upstream",
        [
            sys.executable,
            str(UPSTREAM_SCRIPT),
            "--port",
            str(port := free_port()),
            "--version",
            "2",
        ],
        port,
        tmp_path,
    )
    wait_http(proc, "/readyz")
    yield proc
    proc.stop()


def test_percentiles_from_rollups_agree_with_raw_latencies(
    deployment, monitoring_redis, settings, upstream, api_for, make_user
):
    routes = Deployments(monitoring_redis)
    routes.publish(deployment.name, upstream, version=2, keys=(DEFAULT_KEY,))
    rng = random.Random(7)
    # A spread from sub-millisecond answers to tens of ms, so p50, p95 and p99 differ.
    plans = [("predict", 0)] * 500 + [
        ("slow", rng.choice([1, 2, 3, 5, 8, 13, 21, 34])) for _ in range(300)
    ]
    rng.shuffle(plans)
    with _InProcessGateway(settings.REDIS_URL) as gateway, httpx.Client(timeout=10) as http:
        base = f"http://127.0.0.1:{gateway.port}/d/{deployment.name}"
        deadline = time.monotonic() + 10
        while (
            http.post(f"{base}/predict", headers=auth(), json={"instances": [[1]]}).status_code
            == 404
        ):
            assert time.monotonic() < deadline, "route never reached the gateway"
            time.sleep(0.05)

        def send(plan):
            api, ms = plan
            url = f"{base}/{api}" + (f"?ms={ms}" if api == "slow" else "")
            return http.post(url, headers=auth(), json={"instances": [[1, 2]]}).status_code

        with ThreadPoolExecutor(8) as pool:
            half = len(plans) // 2
            statuses = list(pool.map(send, plans[:half]))
            time.sleep(0.5)
            metrics_rollup()  # a roll-up mid-load: later ones must overwrite, not add
            statuses += list(pool.map(send, plans[half:]))
    metrics_rollup()
    metrics_rollup()
    assert set(statuses) == {200}
    raw = np.asarray(gateway.raw_latencies_ms)  # includes the route-wait probes

    body = (
        api_for(make_user()).get(f"/api/v1/deployments/{deployment.name}/metrics/?window=1h").json()
    )

    [v2] = [v for v in body["versions"] if v["version"] == 2]
    assert v2["requests"] == len(raw)
    assert v2["errors"] == 0 and v2["error_rate"] == 0
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        truth = float(np.percentile(raw, q, method="inverted_cdf"))
        index = bucket_index(truth)
        lower = BUCKET_BOUNDS_MS[index - 1] if index else 0.0
        upper = BUCKET_BOUNDS_MS[index]
        got = v2["latency_ms"][name]
        print(f"{name}: raw {truth:.3f} ms, from roll-ups {got:.3f} ms ({len(raw)} requests)")
        # Same bucket as the true value: within the histogram's resolution (10 % steps).
        assert lower - 1e-3 <= got <= upper + 1e-3, (name, truth, got, lower, upper)
    assert v2["latency_ms"]["mean"] == pytest.approx(raw.mean(), rel=1e-3)
    routes.cleanup()


def test_metrics_api_rejects_unknown_windows_with_the_shared_error_body(
    deployment, api_for, make_user
):
    response = api_for(make_user()).get(f"/api/v1/deployments/{deployment.name}/metrics/?window=5y")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    missing = api_for(make_user()).get("/api/v1/deployments/nope/metrics/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_metrics_api_takes_the_dashboards_windows_30d_included(deployment, api_for, make_user):
    # One window list for the API and the dashboard (the API used to stop at 7d).
    from monitoring.selectors import WINDOWS

    assert list(WINDOWS) == ["1h", "24h", "7d", "30d"]
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=20)
    MetricRollup.objects.create(
        deployment=deployment,
        version=2,
        status=200,
        start=hour,
        period_seconds=PERIOD_HOUR,
        count=5,
        rows=5,
        latency_us_sum=5000,
        histogram=[5 if i == 40 else 0 for i in range(BUCKET_COUNT)],
    )
    api = api_for(make_user())
    requests = {}
    for window, (seconds, _) in WINDOWS.items():
        body = api.get(f"/api/v1/deployments/{deployment.name}/metrics/?window={window}").json()
        assert body["window"] == window
        span = datetime.fromisoformat(body["end"]) - datetime.fromisoformat(body["start"])
        assert span.total_seconds() == seconds
        requests[window] = body["total"]["requests"]
    # The hour row 20 days back is in the month, not in the week.
    assert requests == {"1h": 0, "24h": 0, "7d": 0, "30d": 5}


def test_metrics_api_needs_a_signed_in_user(deployment, client):
    response = client.get(f"/api/v1/deployments/{deployment.name}/metrics/")
    assert response.status_code == 401
    assert "error" in response.json()


def test_metrics_api_reports_throughput_and_errors_per_version_in_few_queries(
    deployment, monitoring_redis, settings, api_for, make_user, django_assert_max_num_queries
):
    recorder = MetricsRecorder()
    now = minute_ago(3)
    _record(
        recorder,
        deployment=deployment.name,
        version=1,
        status=200,
        latencies_ms=[2.0] * 90,
        now=now,
        rows=3,
    )
    _record(
        recorder,
        deployment=deployment.name,
        version=1,
        status=500,
        latencies_ms=[9.0] * 10,
        now=now,
    )
    _record(
        recorder,
        deployment=deployment.name,
        version=2,
        status=200,
        latencies_ms=[1.0] * 36,
        now=now + 60,
    )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    api = api_for(make_user())
    with django_assert_max_num_queries(15):
        body = api.get(f"/api/v1/deployments/{deployment.name}/metrics/?window=24h").json()
    by_version = {v["version"]: v for v in body["versions"]}
    assert body["live_version"] == 2 and by_version[2]["live"]
    assert by_version[1]["requests"] == 100 and by_version[1]["errors"] == 10
    assert by_version[1]["error_rate"] == pytest.approx(0.1)
    assert by_version[1]["predictions"] == 270
    assert by_version[1]["throughput_rps"] == pytest.approx(100 / 86400)
    assert by_version[1]["peak_rps"] == pytest.approx(100 / 60)
    assert by_version[1]["active_seconds"] == 60
    assert body["total"]["requests"] == 136
    assert set(by_version[2]) >= {"latency_ms", "cost", "drift", "rows_per_second"}
