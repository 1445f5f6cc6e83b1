"""The monitoring policy API: merge-patch edits, checked values, audited, taking effect."""

from __future__ import annotations

import pytest

from accounts.choices import Role
from core.models import AuditEvent
from deployments.models import Deployment
from monitoring.models import MonitoringPolicy
from monitoring.selectors import prices_for
from monitoring.services.drift import _window_seconds, drift_thresholds
from monitoring.services.guards import guard_policy


def _url(deployment) -> str:
    return f"/api/v1/deployments/{deployment.name}/monitoring-policy/"


def test_operator_edits_the_policy_and_monitoring_uses_it(deployment, api_for, operator, settings):
    settings.MODELYARD_GUARDS_ALWAYS = False
    api = api_for(operator)
    shown = api.get(_url(deployment))
    assert shown.status_code == 200, shown.json()
    body = shown.json()
    assert body["policy"]["guards"] == {} and body["policy"]["price_cpu_hour"] is None
    assert body["effective"]["guards"]["max_error_rate"] == 0.05
    assert body["effective"]["guards_always"] is False

    changed = api.patch(
        _url(deployment),
        {
            "guards": {"max_error_rate": 0.02, "max_p99_ms": 250, "always": True},
            "drift_thresholds": {"psi_drift": 0.3, "alpha": 0.05},
            "drift_window_seconds": 900,
            "price_cpu_hour": "0.125",
        },
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    body = changed.json()
    assert body["policy"]["guards"] == {"max_error_rate": 0.02, "max_p99_ms": 250.0, "always": True}
    assert body["effective"]["guards_always"] is True
    assert body["effective"]["prices"]["cpu_hour"] == 0.125

    deployment.refresh_from_db()
    assert guard_policy(deployment)["max_error_rate"] == 0.02
    assert guard_policy(deployment)["min_requests"] == 20  # untouched default
    assert drift_thresholds(deployment)["psi_drift"] == 0.3
    assert drift_thresholds(deployment)["psi_warn"] == 0.1
    assert _window_seconds(deployment) == 900
    assert prices_for(deployment)["cpu_hour"] == 0.125

    # null removes one override; other keys stay.
    again = api.patch(
        _url(deployment),
        {"guards": {"max_p99_ms": None}, "price_cpu_hour": None, "drift_thresholds": None},
        format="json",
    )
    assert again.status_code == 200, again.json()
    assert again.json()["policy"]["guards"] == {"max_error_rate": 0.02, "always": True}
    deployment.refresh_from_db()
    assert "max_p99_ms" not in guard_policy(deployment)
    assert prices_for(deployment)["cpu_hour"] == settings.MODELYARD_PRICE_CPU_HOUR
    assert drift_thresholds(deployment)["psi_drift"] == 0.25

    events = list(
        AuditEvent.objects.filter(
            action="monitoring_policy.updated", object_id=str(deployment.pk)
        ).order_by("id")
    )
    assert len(events) == 2
    assert events[0].actor_name == operator.username
    assert events[0].before["guards"] == {} and events[0].before["price_cpu_hour"] is None
    assert events[0].after["guards"]["max_p99_ms"] == 250.0
    assert events[0].after["price_cpu_hour"] == "0.125"
    assert events[1].before == events[0].after
    assert events[1].after["drift_thresholds"] == {}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"guards": {"max_error_rate": 1.5}}, "guards.max_error_rate"),
        ({"guards": {"max_error_rate": "lots"}}, "guards.max_error_rate"),
        ({"guards": {"min_requests": 2.5}}, "guards.min_requests"),
        ({"guards": {"drift": "sometimes"}}, "guards.drift"),
        ({"guards": {"always": "yes"}}, "guards.always"),
        ({"guards": {"max_latency": 5}}, "guards.max_latency"),
        ({"guards": {"max_missing_rate_increase": 1.5}}, "guards.max_missing_rate_increase"),
        ({"guards": {"max_out_of_range_rate": "some"}}, "guards.max_out_of_range_rate"),
        ({"guards": {"max_new_category_rate": -0.1}}, "guards.max_new_category_rate"),
        ({"guards": {"min_rows": 0}}, "guards.min_rows"),
        ({"guards": {"max_mae_increase": -1}}, "guards.max_mae_increase"),
        ({"guards": [1, 2]}, "guards"),
        ({"drift_thresholds": {"psi_warn": 0.5}}, "drift_thresholds.psi_warn"),
        ({"drift_thresholds": {"alpha": 0}}, "drift_thresholds.alpha"),
        ({"drift_thresholds": {"chi": 1}}, "drift_thresholds.chi"),
        ({"drift_window_seconds": 5}, "drift_window_seconds"),
        ({"drift_window_seconds": True}, "drift_window_seconds"),
        ({"price_gb_hour": -1}, "price_gb_hour"),
        ({"price_gb_hour": "0.0000001"}, "price_gb_hour"),
        ({"price_gb_hour": "free"}, "price_gb_hour"),
        ({"retention": 3}, "retention"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_write_nothing(
    deployment, api_for, operator, patch, field
):
    # A valid change alongside the bad one must not be half-applied.
    body = {"price_cpu_hour": "9", **patch}
    refused = api_for(operator).patch(_url(deployment), body, format="json")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_policy"
    assert error["message"].startswith(f"{field}: ")
    assert error["details"] == {"field": field}
    assert not MonitoringPolicy.objects.filter(deployment=deployment).exists()
    assert Deployment.objects.get(pk=deployment.pk).guard_policy == {}
    assert not AuditEvent.objects.filter(action="monitoring_policy.updated").exists()


def test_only_deployers_edit_and_viewers_read(deployment, api_for, make_user):
    viewer, scientist = make_user(Role.VIEWER), make_user(Role.DATA_SCIENTIST)
    assert api_for(viewer).get(_url(deployment)).status_code == 200
    for user in (viewer, scientist):
        refused = api_for(user).patch(
            _url(deployment), {"guards": {"max_error_rate": 0.5}}, format="json"
        )
        assert refused.status_code == 403
    assert Deployment.objects.get(pk=deployment.pk).guard_policy == {}
    missing = api_for(viewer).get("/api/v1/deployments/nope/monitoring-policy/")
    assert missing.status_code == 404


def test_an_unchanged_patch_records_no_event(deployment, api_for, operator):
    api = api_for(operator)
    assert (
        api.patch(_url(deployment), {"drift_window_seconds": 600}, format="json").status_code == 200
    )
    assert (
        api.patch(_url(deployment), {"drift_window_seconds": 600}, format="json").status_code == 200
    )
    assert AuditEvent.objects.filter(action="monitoring_policy.updated").count() == 1
