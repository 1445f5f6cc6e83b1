"""Task policy and schedule took effect; retention is idempotent; the smaller API endpoints."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone

from config.celery_app import app
from gateway.metrics import BUCKET_COUNT, BUFFER_TTL_S, MetricsRecorder
from monitoring import tasks
from monitoring.choices import PERIOD_HOUR, DriftWindowKind
from monitoring.models import DriftWindow, MetricRollup, SlotResourceSample
from monitoring.services import metrics_rollup
from monitoring.services.prediction_log import partition_name, partitions_ensure, partitions_list
from monitoring.services.rollups import _ROLLUP_LOCK
from tests.monitoring.conftest import flush, minute_ago

PERIODIC = {
    "monitoring.metrics_rollup",
    "monitoring.resources_sample",
    "monitoring.guards_check",
    "monitoring.drift_windows",
    "monitoring.alerts_detect",
    "monitoring.webhooks_deliver",
    "monitoring.retention",
    "monitoring.dashboard_cache_warm",
    "monitoring.prediction_baselines_ensure",
}
# The frontend app's names of the two dashboard helpers before they moved here (issue 17).
FORMER_NAMES = {
    "frontend.dashboard_cache_warm": "monitoring.dashboard_cache_warm",
    "frontend.prediction_baselines_ensure": "monitoring.prediction_baselines_ensure",
}


def test_monitoring_tasks_are_scheduled_routed_and_declare_their_policy():
    scheduled = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled >= PERIODIC
    assert "monitoring" in django_settings.INSTALLED_APPS
    for name in [*PERIODIC, "monitoring.drift_compute"]:
        task = app.tasks[name]
        assert app.amqp.router.route({}, name)["queue"].name == "monitoring", name
        assert task.acks_late is True and task.time_limit > task.soft_time_limit, name


def test_the_dashboard_helpers_former_names_are_still_known_but_no_longer_scheduled():
    # A message queued under the old name before an upgrade must meet a registered task (the
    # worker then drops it as expired), not fail as NotRegistered.
    scheduled = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    for old, new in FORMER_NAMES.items():
        assert old not in scheduled and new in scheduled
        former, current = app.tasks[old], app.tasks[new]
        policy = ("acks_late", "expires", "soft_time_limit", "time_limit", "autoretry_for")
        assert [getattr(former, k) for k in policy] == [getattr(current, k) for k in policy]
        assert former.expires and former.expires <= 60


def test_minute_rows_outlive_the_gateway_buffers():
    # A buffer rolled up after its minute was folded into an hour would count twice.
    assert django_settings.MODELYARD_METRICS_MINUTE_RETENTION_HOURS * 3600 > BUFFER_TTL_S


def test_only_one_rollup_runs_at_a_time(deployment, monitoring_redis, settings):
    recorder = MetricsRecorder()
    recorder.record(
        deployment=deployment.name, version=2, status=200, latency_s=0.001, rows=1, now=minute_ago()
    )
    flush(recorder, settings.REDIS_URL)
    held, release = threading.Event(), threading.Event()

    def hold_lock():
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
                held.set()
                release.wait(10)
                cursor.execute("COMMIT")
        finally:
            other.close()

    thread = threading.Thread(target=hold_lock)
    thread.start()
    try:
        assert held.wait(10)
        blocked = metrics_rollup()
    finally:
        release.set()
        thread.join()
    assert blocked.locked and blocked.rows_written == 0
    assert monitoring_redis.zcard("modelyard:metrics:dirty") == 1  # left for the next run
    assert metrics_rollup().rows_written == 1


def test_retention_task_downsamples_and_deletes_and_a_rerun_changes_nothing(deployment, settings):
    now = timezone.now()
    old = now - timedelta(days=settings.MODELYARD_METRICS_HOUR_RETENTION_DAYS + 1)
    MetricRollup.objects.create(
        deployment=deployment,
        version=1,
        status=200,
        period_seconds=PERIOD_HOUR,
        start=old.replace(minute=0, second=0, microsecond=0),
        count=5,
        histogram=[0] * BUCKET_COUNT,
    )
    for minute in (0, 1):
        MetricRollup.objects.create(
            deployment=deployment,
            version=1,
            status=200,
            start=(now - timedelta(days=5)).replace(minute=minute, second=0, microsecond=0),
            count=3,
            histogram=[3] + [0] * (BUCKET_COUNT - 1),
        )
    SlotResourceSample.objects.create(
        deployment=deployment,
        slot="blue",
        version=1,
        cpu_seconds=1,
        rss_bytes=1,
        process_count=1,
        taken_at=now - timedelta(days=settings.MODELYARD_RESOURCE_RETENTION_DAYS + 1),
    )
    DriftWindow.objects.create(
        deployment=deployment,
        version=1,
        kind=DriftWindowKind.SCHEDULED,
        start=old - timedelta(hours=1),
        end=old,
        status="ok",
    )

    # A day of the prediction log past its retention, and one inside it.
    expired = timezone.now().date() - timedelta(
        days=settings.MODELYARD_PREDICTION_LOG_RETENTION_DAYS + 2
    )
    partitions_ensure(expired, expired)
    partitions_ensure(timezone.now().date(), timezone.now().date())

    first = tasks.retention_task.apply().get()
    second = tasks.retention_task.apply().get()

    assert first == {
        "minutes_folded": 2,
        "hours_deleted": 1,
        "resource_samples_deleted": 1,
        "drift_windows_deleted": 1,
        "prediction_log_days_dropped": 1,
    }
    assert partition_name(timezone.now().date()) in partitions_list()
    assert set(second.values()) == {0}
    [hour] = MetricRollup.objects.all()
    assert hour.period_seconds == PERIOD_HOUR and hour.count == 6 and hour.histogram[0] == 6


@pytest.fixture
def eager_celery():
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True  # the test has no worker; nothing reaches a broker
    yield
    app.conf.task_always_eager = previous


def test_drift_api_computes_on_demand_for_operators_and_shows_the_series(
    deployment, monitoring_redis, settings, api_for, operator, make_user, eager_celery
):
    from tests.monitoring.test_drift import _sample_traffic

    _sample_traffic(settings, deployment, version=2, rows=600, shift_age=20.0)
    url = f"/api/v1/deployments/{deployment.name}/drift/"
    viewer = api_for(make_user())
    assert viewer.post(url, {}, format="json").status_code == 403
    assert api_for(operator).post(url, {"seconds": 600}, format="json").status_code == 202

    body = viewer.get(url + "?window=1h").json()
    assert [point["status"] for point in body["features"]["age"]] == ["drift"]
    assert [point["status"] for point in body["features"]["income"]] == ["ok"]
    only = viewer.get(url + "?window=1h&feature=age").json()
    assert set(only["features"]) == {"age"}


def test_guard_breaches_and_alerts_are_listed_per_deployment(deployment, api_for, make_user):
    api = api_for(make_user())
    assert api.get(f"/api/v1/deployments/{deployment.name}/guard-breaches/").json() == []
    assert api.get(f"/api/v1/deployments/{deployment.name}/alerts/").json() == []
    assert api.get("/api/v1/deployments/nope/guard-breaches/").status_code == 404
