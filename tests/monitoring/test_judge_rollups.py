"""The canary judge on what the gateway really recorded: requests through the gateway's
metrics recorder, flushed to Redis, rolled up into PostgreSQL, judged per version."""

from datetime import timedelta

import pytest

from gateway.metrics import MetricsRecorder
from monitoring.services.judge import canary_judge
from tests.monitoring.conftest import flush, minute_ago, serve_traffic, utc

pytestmark = pytest.mark.django_db


def _judged(deployment, settings, canary_errors, canary_median_ms=20.0, policy=None):
    from monitoring.services.rollups import metrics_rollup

    recorder = MetricsRecorder()
    now = minute_ago(2)
    serve_traffic(
        recorder, deployment, 1, requests=2_000, errors=10, median_ms=20.0, now=now, seed=1
    )
    serve_traffic(
        recorder,
        deployment,
        2,
        requests=2_000,
        errors=canary_errors,
        median_ms=canary_median_ms,
        now=now,
        seed=2,
    )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    start = utc(now // 60 * 60)
    return canary_judge(
        deployment=deployment,
        baseline_version=1,
        canary_version=2,
        start=start,
        end=start + timedelta(minutes=1),
        policy=policy,
    )


def test_a_canary_with_more_5xx_fails_with_the_counts_it_was_judged_on(
    deployment, monitoring_redis, settings
):
    result = _judged(deployment, settings, canary_errors=60)
    assert result.verdict == "fail"
    error_rate = result.metrics[0]
    assert error_rate.counts == {
        "baseline_requests": 2_000,
        "baseline_errors": 10,
        "canary_requests": 2_000,
        "canary_errors": 60,
    }
    assert (error_rate.baseline, error_rate.canary) == (0.005, 0.03)
    assert error_rate.p_value < 1e-6
    assert result.as_dict()["metrics"][0]["verdict"] == "fail"


def test_a_healthy_canary_passes_and_a_slow_one_fails_on_latency(
    deployment, monitoring_redis, settings
):
    assert _judged(deployment, settings, canary_errors=10).verdict == "pass"
    monitoring_redis.flushdb()
    from monitoring.models import MetricRollup

    MetricRollup.objects.all().delete()
    slow = _judged(deployment, settings, canary_errors=10, canary_median_ms=40.0)
    assert [m.verdict for m in slow.metrics] == ["pass", "fail"]


def test_the_baseline_is_judged_over_the_minutes_the_canary_answered_only(
    deployment, monitoring_redis, settings
):
    """A window that starts before the canary took traffic: the baseline's earlier minute (a
    quieter machine, 8 ms) is left out, or the canary's 20 ms would look 2.5x slower than a
    baseline that answers in 20 ms beside it."""
    from monitoring.services.rollups import metrics_rollup

    recorder = MetricsRecorder()
    before, during = minute_ago(3), minute_ago(2)
    serve_traffic(
        recorder, deployment, 1, requests=4_000, errors=0, median_ms=8.0, now=before, seed=1
    )
    for version, seed in ((1, 2), (2, 3)):
        serve_traffic(
            recorder,
            deployment,
            version,
            requests=1_000,
            errors=0,
            median_ms=20.0,
            now=during,
            seed=seed,
        )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    start = utc(before // 60 * 60)
    judged = canary_judge(
        deployment=deployment,
        baseline_version=1,
        canary_version=2,
        start=start,
        end=start + timedelta(minutes=2),
    )
    assert judged.verdict == "pass", judged.as_dict()
    assert judged.metrics[0].counts["baseline_requests"] == 1_000
    latency = judged.metrics[1]
    assert 0.8 < latency.canary / latency.baseline < 1.25, latency


def test_an_arm_without_traffic_or_labels_is_not_yet(deployment, monitoring_redis, settings):
    now = utc(minute_ago(2) // 60 * 60)
    quiet = canary_judge(
        deployment=deployment,
        baseline_version=1,
        canary_version=2,
        start=now,
        end=now + timedelta(minutes=1),
    )
    assert quiet.verdict == "not_yet"
    # Accuracy as a guard metric: no labelled predictions on either arm, so never a pass.
    labelled = _judged(deployment, settings, canary_errors=10, policy={"max_accuracy_drop": 0.02})
    assert labelled.metrics[-1].metric == "accuracy"
    assert labelled.verdict == "not_yet" and labelled.metrics[-1].verdict == "not_yet"
