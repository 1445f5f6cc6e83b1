"""The reconcile sweep and the local servers' stop on their own, with the runtime in memory."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import backends
from deployments.choices import RolloutState
from deployments.models import Deployment, DeploymentEvent, Rollout, Slot
from deployments.services import (
    deployments_reconcile,
    rollout_advance,
    rollout_start,
    rollouts_stuck,
    runtime_servers_stop,
)
from gateway.routes import route_remove
from tests.deployments.conftest import built, published
from tests.factories import DeploymentFactory, ModelVersionFactory, RolloutFactory, SlotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def live(registered_model, operator, fake_backend) -> Deployment:
    """`churn-prod` serving v1 on its blue slot (baking)."""
    deployment = DeploymentFactory(name="churn-prod", model=registered_model, bake_seconds=600)
    version = ModelVersionFactory(model=registered_model, artifact=b"model bytes")
    built(version)
    rollout = rollout_start(deployment=deployment, version_number=version.number, actor=operator)
    assert rollout_advance(rollout_id=rollout.pk).state == RolloutState.BAKING
    deployment.refresh_from_db()
    return deployment


def _events(deployment: Deployment) -> list[tuple[str, str]]:
    return list(
        DeploymentEvent.objects.filter(deployment=deployment)
        .order_by("id")
        .values_list("kind", "slot")
    )


def test_what_the_supervisor_did_is_recorded_on_the_deployment(fake_backend, live):
    fake_backend.events = [
        fake_backend.event("churn-prod.blue", "restarted", "exited with 137; restarted"),
        fake_backend.event("gone.blue", "crashed", "no deployment has this slot"),
    ]

    actions = deployments_reconcile()

    assert actions == [
        "churn-prod.blue: restarted: exited with 137; restarted",
        "gone.blue: crashed: no deployment has this slot",
    ]
    assert _events(live) == [("slot_restarted", "blue")]
    assert DeploymentEvent.objects.get().message == "exited with 137; restarted"


def test_a_converged_deployment_is_left_alone(fake_backend, live):
    assert deployments_reconcile() == []
    assert fake_backend.stopped == [] and _events(live) == []


def test_a_slot_no_deployment_needs_is_stopped_and_the_live_one_is_not(fake_backend, live):
    fake_backend.slot_start(slot_key="left-over.green", bento_tag="churn:v1")

    actions = deployments_reconcile()

    assert actions == ["left-over.green: stopped (no deployment needs it)"]
    assert fake_backend.stopped == ["left-over.green"]
    assert fake_backend.slots_by_key["churn-prod.blue"].running


def test_a_route_redis_lost_is_republished(fake_backend, live):
    route_remove(backends.route_store(), live.name)

    actions = deployments_reconcile()

    assert actions == ["churn-prod: route republished"]
    assert published(live).version == 1
    assert _events(live) == [("route_republished", "")]


def test_a_slot_whose_server_moved_gets_its_new_url(fake_backend, live):
    moved_to = fake_backend.slots_by_key["churn-prod.blue"].url
    SlotFactory(deployment=live, color="blue", url="http://127.0.0.1:9", state="ready")

    deployments_reconcile()

    assert Slot.objects.get(deployment=live, color="blue").url == moved_to
    assert ("slot_moved", "blue") in _events(live)
    assert published(live).upstream == moved_to


def test_stuck_rollouts_are_named_and_resumed(fake_backend, registered_model):
    long_ago = timezone.now() - timedelta(minutes=2)
    lost = RolloutFactory(deployment__model=registered_model, state=RolloutState.PENDING)
    fresh = RolloutFactory(deployment__model=registered_model, state=RolloutState.PENDING)
    overdue = RolloutFactory(
        deployment__model=registered_model, state=RolloutState.BAKING, bake_until=long_ago
    )
    baking = RolloutFactory(
        deployment__model=registered_model,
        state=RolloutState.BAKING,
        bake_until=timezone.now() + timedelta(minutes=5),
    )
    Rollout.objects.filter(pk__in=[lost.pk, overdue.pk, baking.pk]).update(
        state_changed_at=long_ago
    )

    assert rollouts_stuck() == sorted([lost.pk, overdue.pk])
    assert fresh.pk not in rollouts_stuck()

    actions = deployments_reconcile()

    assert f"rollout {lost.pk}: resumed" in actions
    assert f"rollout {overdue.pk}: resumed" in actions
    lost.refresh_from_db()
    assert lost.state_changed_at > long_ago  # not named again by the next sweep
    assert (
        DeploymentEvent.objects.filter(deployment=lost.deployment, kind="rollout_resumed").count()
        == 1
    )
    assert rollouts_stuck() == [overdue.pk]  # its bake timer is still due: the advance ends it


def test_stopping_the_local_servers_records_each_slot_as_stopped(fake_backend, live):
    lines = runtime_servers_stop(reason="make run is stopping")

    assert lines == ["churn-prod.blue: stopped: make run is stopping"]
    assert fake_backend.stopped == ["churn-prod.blue"]
    assert _events(live) == [("slot_stopped", "blue")]
