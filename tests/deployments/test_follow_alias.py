"""Deployments that follow a protected alias: moving it starts a rollout, audited."""

from __future__ import annotations

import pytest

from core.models import AuditEvent
from deployments.models import Deployment, DeploymentEvent, Rollout
from registry.choices import VersionState
from registry.models import ModelVersion
from tests.factories import DeploymentFactory
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def approved(registered_model, scientist, sklearn_model):
    versions = [
        upload_version(registered_model, scientist, sklearn_model, validate=False) for _ in range(2)
    ]
    ModelVersion.objects.filter(pk__in=[v.pk for v in versions]).update(state=VersionState.APPROVED)
    return versions


@pytest.fixture
def deployments(registered_model, operator):
    return [
        DeploymentFactory(name=name, model=registered_model, environment=env, created_by=operator)
        for name, env in [("churn-prod", "production"), ("churn-staging", "staging")]
    ]


def _follow(api, name, alias):
    return api.put(f"/api/v1/deployments/{name}/follow/", {"alias": alias}, format="json")


def test_moving_a_followed_protected_alias_starts_an_audited_rollout(
    approved, deployments, operator, reviewer, api_for, django_capture_on_commit_callbacks
):
    ops = api_for(operator)
    followed = _follow(ops, "churn-prod", "champion")
    assert followed.status_code == 200 and followed.json()["follow_alias"] == "champion"
    with django_capture_on_commit_callbacks(execute=True):
        moved = api_for(reviewer).put(
            "/api/v1/models/churn/aliases/champion/", {"version": 1}, format="json"
        )
    assert moved.status_code == 200, moved.json()
    rollout = Rollout.objects.get()
    assert rollout.deployment.name == "churn-prod"  # staging does not follow: no rollout there
    assert (rollout.version.number, rollout.alias, rollout.created_by) == (1, "champion", reviewer)
    assert rollout.reason == "alias champion moved to v1"
    audit = AuditEvent.objects.get(action="rollout.state_changed")
    assert audit.after["alias"] == "champion" and audit.actor_id == reviewer.pk
    assert AuditEvent.objects.filter(action="deployment.updated").get().after == {
        "follow_alias": "champion"
    }

    # Pointing it at the version it already points at is no move: no second rollout.
    with django_capture_on_commit_callbacks(execute=True):
        api_for(reviewer).put(
            "/api/v1/models/churn/aliases/champion/", {"version": 1}, format="json"
        )
    assert Rollout.objects.count() == 1


def test_a_follower_that_cannot_take_the_rollout_gets_an_event_and_the_move_stands(
    approved, deployments, operator, api_for, django_capture_on_commit_callbacks
):
    ops = api_for(operator)
    for name in ("churn-prod", "churn-staging"):
        assert _follow(ops, name, "champion").status_code == 200
    busy = ops.post("/api/v1/deployments/churn-prod/rollouts/", {"version": 2}, format="json")
    assert busy.status_code == 202, busy.json()
    with django_capture_on_commit_callbacks(execute=True):
        moved = ops.put("/api/v1/models/churn/aliases/champion/", {"version": 1}, format="json")
    assert moved.status_code == 200
    started = Rollout.objects.filter(alias="champion").get()
    assert started.deployment.name == "churn-staging"
    event = DeploymentEvent.objects.get(kind="alias_follow_skipped")
    assert event.deployment.name == "churn-prod" and "still pending" in event.message


def test_only_a_protected_alias_can_be_followed_and_only_by_an_operator(
    approved, deployments, operator, scientist, api_for, django_capture_on_commit_callbacks
):
    ds = api_for(scientist)
    assert ds.put("/api/v1/models/churn/aliases/candidate/", {"version": 1}, format="json")
    refused = _follow(api_for(operator), "churn-staging", "candidate")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "alias_not_protected"
    assert "not protected" in refused.json()["error"]["message"]
    forbidden = _follow(ds, "churn-staging", "champion")
    assert forbidden.status_code == 403
    assert Deployment.objects.get(name="churn-staging").follow_alias == ""
    # An unprotected alias move never starts a rollout, even on a deployment's model.
    with django_capture_on_commit_callbacks(execute=True):
        ds.put("/api/v1/models/churn/aliases/candidate/", {"version": 2}, format="json")
    assert not Rollout.objects.exists()
    stopped = _follow(api_for(operator), "churn-staging", "")
    assert stopped.status_code == 200 and stopped.json()["follow_alias"] == ""
