"""Serving settings over the API: set on create, changed with PATCH, every bad value refused with
the one error body naming the field and nothing written."""

from __future__ import annotations

import pytest

from accounts.choices import Role
from core.choices import AuditAction
from core.models import AuditEvent
from deployments.models import Deployment
from tests.factories import RegisteredModelFactory

URL = "/api/v1/deployments/"


@pytest.fixture
def operator_api(db, api_for, make_user):
    RegisteredModelFactory(name="churn")
    return api_for(make_user(Role.OPERATOR, "olive"))


def _create(api, **serving):
    body = {"name": "serve-prod", "model": "churn", "environment": "production"}
    if serving:
        body["serving"] = serving
    return api.post(URL, body, format="json")


def test_defaults_are_one_replica_one_worker_and_batching_on(operator_api) -> None:
    response = _create(operator_api)
    assert response.status_code == 201, response.content
    serving = response.json()["serving"]
    assert serving["workers"] == 1
    assert (serving["replicas_min"], serving["replicas_max"]) == (1, 1)
    assert serving["autoscaling"] is False
    assert serving["batch_max_size"] >= 1 and serving["batch_max_latency_ms"] >= 1


def test_create_with_fixed_replicas_and_update_to_autoscaling_is_audited(operator_api) -> None:
    response = _create(operator_api, replicas_min=3, workers=2)
    assert response.status_code == 201, response.content
    serving = response.json()["serving"]
    assert (serving["replicas_min"], serving["replicas_max"], serving["workers"]) == (3, 3, 2)

    response = operator_api.patch(
        f"{URL}serve-prod/serving/",
        {"serving": {"replicas_min": 1, "replicas_max": 4, "scale_target_inflight": 6}},
        format="json",
    )
    assert response.status_code == 200, response.content
    serving = response.json()["serving"]
    assert (serving["replicas_min"], serving["replicas_max"]) == (1, 4)
    assert serving["scale_target_inflight"] == 6.0 and serving["autoscaling"] is True
    event = AuditEvent.objects.filter(action=AuditAction.DEPLOYMENT_UPDATED).get()
    assert event.before == {"replicas_min": 3, "replicas_max": 3, "scale_target_inflight": 8.0}
    assert event.after == {"replicas_min": 1, "replicas_max": 4, "scale_target_inflight": 6.0}


@pytest.mark.parametrize(
    ("serving", "named"),
    [
        ({"replicas": 2}, "replicas"),
        ({"workers": 0}, "serving.workers"),
        ({"workers": 2.5}, "serving.workers"),
        ({"workers": True}, "serving.workers"),
        ({"workers": "2"}, "serving.workers"),
        ({"replicas_min": 4, "replicas_max": 2}, "serving.replicas_max"),
        ({"replicas_max": 33}, "serving.replicas_max"),
        ({"batch_max_latency_ms": 60_000}, "serving.batch_max_latency_ms"),
        ({"scale_target_inflight": 0}, "serving.scale_target_inflight"),
    ],
)
def test_bad_serving_settings_are_refused_and_nothing_is_written(
    operator_api, serving, named
) -> None:
    response = _create(operator_api, **serving)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert named in error["message"], error
    assert not Deployment.objects.exists()

    assert _create(operator_api).status_code == 201
    response = operator_api.patch(f"{URL}serve-prod/serving/", {"serving": serving}, format="json")
    assert response.status_code == 400, response.content
    assert named in response.json()["error"]["message"]
    assert Deployment.objects.get().replicas_max == 1
    assert not AuditEvent.objects.filter(action=AuditAction.DEPLOYMENT_UPDATED).exists()


def test_update_below_the_current_minimum_is_refused(operator_api) -> None:
    assert _create(operator_api, replicas_min=2, replicas_max=4).status_code == 201
    response = operator_api.patch(
        f"{URL}serve-prod/serving/", {"serving": {"replicas_max": 1}}, format="json"
    )
    assert response.status_code == 400
    assert "at least replicas_min (2)" in response.json()["error"]["message"]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.DATA_SCIENTIST, Role.REVIEWER])
def test_changing_serving_needs_the_deploy_capability(operator_api, api_for, make_user, role):
    assert _create(operator_api).status_code == 201
    api = api_for(make_user(role, f"user-{role}"))
    response = api.patch(f"{URL}serve-prod/serving/", {"serving": {"workers": 2}}, format="json")
    assert response.status_code == 403
    assert Deployment.objects.get().workers == 1
    assert api.get(f"{URL}serve-prod/").json()["serving"]["workers"] == 1


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"max_error_rate": 1.5}, "guard_policy.max_error_rate"),
        ({"max_latency": 5}, "guard_policy.max_latency"),  # not a rule
        ({"drift": "sometimes"}, "guard_policy.drift"),
        ({"min_labels": 0}, "guard_policy.min_labels"),
    ],
)
def test_a_bad_guard_policy_on_create_is_refused_naming_the_rule(operator_api, policy, field):
    body = {"name": "guarded-prod", "model": "churn", "environment": "production"}
    response = operator_api.post(URL, {**body, "guard_policy": policy}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["message"], response.json()
    assert not Deployment.objects.filter(name="guarded-prod").exists()


def test_a_guard_policy_on_create_is_kept_as_the_guards_read_it(operator_api):
    body = {"name": "guarded-prod", "model": "churn", "environment": "production"}
    policy = {"max_error_rate": 0.02, "min_requests": 50, "drift": "warn", "always": True}
    response = operator_api.post(URL, {**body, "guard_policy": policy}, format="json")
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="guarded-prod").guard_policy == policy
