"""Guards roll back by themselves with evidence; cost per prediction is checkable arithmetic."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import AuditEvent
from deployments.choices import RolloutKind, RolloutState
from deployments.models import Deployment, Rollout
from gateway.metrics import MetricsRecorder
from monitoring import selectors
from monitoring.choices import GuardAction
from monitoring.models import GuardBreach, MonitoringPolicy, SlotResourceSample
from monitoring.services import guards_check, metrics_rollup
from monitoring.tasks import guards_check_task
from tests.monitoring.conftest import flush


def _traffic(settings, deployment, *, version, ok, errors, latency_ms=2.0, rows=1):
    recorder = MetricsRecorder()
    now = timezone.now().timestamp()
    for status, count in ((200, ok), (500, errors)):
        for _ in range(count):
            recorder.record(
                deployment=deployment.name,
                version=version,
                status=status,
                latency_s=latency_ms / 1e3,
                rows=rows,
                now=now,
            )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()


def test_error_rate_guard_rolls_back_while_baking_with_the_figures_in_the_audit_log(
    deployment, monitoring_redis, settings
):
    Deployment.objects.filter(pk=deployment.pk).update(guard_policy={"max_error_rate": 0.1})
    _traffic(settings, deployment, version=2, ok=40, errors=10)

    [breach] = guards_check()

    assert breach.action == GuardAction.ROLLED_BACK and breach.rules == ["error_rate"]
    assert breach.rollback.kind == RolloutKind.ROLLBACK and breach.rollback.version.number == 1
    assert Rollout.objects.get(deployment=deployment, version__number=2).state == (
        RolloutState.ROLLED_BACK
    )
    audit = AuditEvent.objects.get(action="deployment.rollback", object_id=str(breach.rollback.pk))
    assert audit.actor_id is None and audit.via == "system"
    assert audit.reason.startswith("guard breached: error_rate on v2")
    evidence = audit.after["evidence"]
    assert evidence["rules"] == ["error_rate"]
    assert evidence["requests"] == 50 and evidence["errors"] == 10
    assert evidence["error_rate"] == {"value": 0.2, "threshold": 0.1}


def test_guards_checked_twice_roll_back_once(deployment, monitoring_redis, settings):
    _traffic(settings, deployment, version=2, ok=10, errors=30)
    first = guards_check_task.apply().get()
    second = guards_check_task.apply().get()
    assert len(first) == 1 and second == []
    assert Rollout.objects.filter(deployment=deployment, kind=RolloutKind.ROLLBACK).count() == 1


def test_p99_guard_and_quiet_deployments(deployment, monitoring_redis, settings):
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_p99_ms": 50, "min_requests": 20}
    )
    _traffic(settings, deployment, version=2, ok=10, errors=0, latency_ms=400)
    assert guards_check() == []  # too few requests to judge
    _traffic(settings, deployment, version=2, ok=30, errors=0, latency_ms=400)
    [breach] = guards_check()
    assert breach.rules == ["p99_ms"] and breach.evidence["p99_ms"]["value"] > 350


def test_guards_leave_a_live_version_alone_after_the_bake_unless_always(
    deployment, monitoring_redis, settings
):
    Rollout.objects.filter(deployment=deployment, state=RolloutState.BAKING).update(
        state=RolloutState.LIVE
    )
    _traffic(settings, deployment, version=2, ok=0, errors=40)
    assert guards_check() == []
    Deployment.objects.filter(pk=deployment.pk).update(guard_policy={"always": True})
    assert len(guards_check()) == 1


def test_a_rollback_is_never_undone_by_a_guard(deployment, monitoring_redis, settings):
    _traffic(settings, deployment, version=2, ok=0, errors=40)
    [breach] = guards_check()
    # v1 now serves through a rollback; even failing, guards do not flip back to v2.
    Deployment.objects.filter(pk=deployment.pk).update(guard_policy={"always": True})
    _traffic(settings, deployment, version=1, ok=0, errors=40)
    assert guards_check() == []
    assert breach.rollback.kind == RolloutKind.ROLLBACK


def test_a_refused_rollback_is_recorded_once(deployment, monitoring_redis, settings):
    # Nothing to go back to: the other slot is empty and no earlier rollout exists.
    from deployments.models import Slot

    Slot.objects.filter(deployment=deployment, color="blue").update(version=None)
    Rollout.objects.filter(deployment=deployment).update(previous_version=None)
    Rollout.objects.filter(deployment=deployment, version__number=1).delete()
    _traffic(settings, deployment, version=2, ok=0, errors=40)
    [breach] = guards_check()
    assert breach.action == GuardAction.ROLLBACK_REFUSED
    assert guards_check() == []
    assert GuardBreach.objects.count() == 1


# --- cost -----------------------------------------------------------------------------------


def _sample(deployment, slot, version, cpu, rss_gb, at):
    SlotResourceSample.objects.create(
        deployment=deployment,
        slot=slot,
        version=version,
        cpu_seconds=cpu,
        rss_bytes=int(rss_gb * 1e9),
        process_count=2,
        taken_at=at,
    )


def test_cost_per_prediction_shows_the_figures_it_is_computed_from(
    deployment, monitoring_redis, settings
):
    settings.MODELYARD_PRICE_CPU_HOUR = 0.036
    settings.MODELYARD_PRICE_GB_HOUR = 0.01
    t0 = timezone.now() - timedelta(minutes=5)
    # green (v2): 10 CPU-s in the first minute, then a restart (counter drops) and 4 more.
    _sample(deployment, "green", 2, 100.0, 0.5, t0)
    _sample(deployment, "green", 2, 110.0, 0.5, t0 + timedelta(seconds=60))
    _sample(deployment, "green", 2, 4.0, 0.25, t0 + timedelta(seconds=120))
    # blue (v1), warm and idle: memory only.
    _sample(deployment, "blue", 1, 50.0, 1.0, t0)
    _sample(deployment, "blue", 1, 50.0, 1.0, t0 + timedelta(seconds=120))
    _traffic(settings, deployment, version=2, ok=100, errors=0, rows=10)

    use = selectors.resources_by_version(
        deployment=deployment, start=t0 - timedelta(seconds=1), end=timezone.now()
    )
    assert use[2].cpu_seconds == pytest.approx(14.0)
    assert use[2].gb_seconds == pytest.approx(0.5 * 60 + 0.5 * 60)
    assert use[1].cpu_seconds == 0 and use[1].gb_seconds == pytest.approx(120.0)

    body = selectors.deployment_metrics(deployment=deployment, window="1h")
    cost = {v["version"]: v["cost"] for v in body["versions"]}
    expected = 14.0 / 3600 * 0.036 + 60.0 / 3600 * 0.01
    assert cost[2]["cpu_seconds"] == pytest.approx(14.0)
    assert cost[2]["memory_gb_hours"] == pytest.approx(60.0 / 3600)
    assert cost[2]["cost"] == pytest.approx(expected)
    assert cost[2]["predictions"] == 1000
    assert cost[2]["cost_per_prediction"] == pytest.approx(expected / 1000)
    assert cost[1]["predictions"] == 0 and cost[1]["cost_per_prediction"] is None


def test_per_deployment_prices_override_the_settings(deployment, settings):
    settings.MODELYARD_PRICE_CPU_HOUR = 1.0
    assert selectors.prices_for(deployment)["cpu_hour"] == 1.0
    MonitoringPolicy.objects.create(deployment=deployment, price_cpu_hour="0.5")
    assert selectors.prices_for(deployment) == {
        "cpu_hour": 0.5,
        "gb_hour": settings.MODELYARD_PRICE_GB_HOUR,
    }


def test_cost_guard_trips_on_an_expensive_version(deployment, monitoring_redis, settings):
    settings.MODELYARD_PRICE_CPU_HOUR = 3600.0  # 1 per CPU-second: easy to read
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_cost_per_prediction": 0.01}
    )
    now = timezone.now()
    _sample(deployment, "green", 2, 0.0, 0.0, now - timedelta(seconds=90))
    _sample(deployment, "green", 2, 5.0, 0.0, now - timedelta(seconds=30))
    _traffic(settings, deployment, version=2, ok=50, errors=0)
    [breach] = guards_check()
    assert breach.rules == ["cost_per_prediction"]
    figures = breach.evidence["cost_per_prediction"]
    assert figures["cpu_seconds"] == 5.0 and figures["predictions"] == 50
    assert figures["cost_per_prediction"] == pytest.approx(0.1)


def test_a_drift_guard_rechecking_keeps_one_window_and_alerts_once(
    deployment, monitoring_redis, settings
):
    from deployments.models import Slot
    from monitoring.choices import DriftWindowKind
    from monitoring.models import Alert, DriftWindow
    from monitoring.services import alerts_detect
    from tests.monitoring.test_drift import _sample_traffic

    # No previous version: the rollback is refused, so the guard keeps checking.
    Slot.objects.filter(deployment=deployment, color="blue").update(version=None)
    Rollout.objects.filter(deployment=deployment).update(previous_version=None)
    Rollout.objects.filter(deployment=deployment, version__number=1).delete()
    Deployment.objects.filter(pk=deployment.pk).update(guard_policy={"drift": "warn"})
    _sample_traffic(settings, deployment, version=2, rows=1000, shift_age=20.0)

    [breach] = guards_check()
    assert breach.rules == ["drift"] and set(breach.evidence["drift"]["features"]) == {"age"}
    guards_check()
    guards_check()
    assert DriftWindow.objects.filter(kind=DriftWindowKind.GUARD).count() == 1
    alerts_detect()
    alerts_detect()
    assert Alert.objects.filter(kind="drift.detected").count() == 1
    assert Alert.objects.filter(kind="guard.breach").count() == 1
