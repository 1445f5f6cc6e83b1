"""The rollout services on their own: rollout_start's rules and rollout_advance's steps, with
the runtime in memory (tests/deployments/fakes.py) and the route in this run's Redis."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import Conflict, InvalidState
from deployments.choices import RolloutState, SlotState
from deployments.models import Deployment, Rollout, Slot
from deployments.services import rollout_advance, rollout_start
from registry.choices import VersionState
from tests.deployments.conftest import built, published
from tests.factories import DeploymentFactory, ModelVersionFactory, RolloutFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(registered_model) -> Deployment:
    return DeploymentFactory(name="churn-prod", model=registered_model, bake_seconds=600)


def _version(deployment: Deployment, **fields) -> object:
    version = ModelVersionFactory(model=deployment.model, artifact=b"model bytes", **fields)
    built(version)
    return version


def _rolled_out(deployment, version, operator) -> Rollout:
    rollout = rollout_start(deployment=deployment, version_number=version.number, actor=operator)
    return rollout_advance(rollout_id=rollout.pk)


def test_a_rollout_starts_verifies_and_switches_traffic_then_bakes(
    fake_backend, deployment, operator
):
    v1 = _version(deployment)

    rollout = _rolled_out(deployment, v1, operator)

    assert rollout.state == RolloutState.BAKING  # waits for its bake timer now
    assert [step["state"] for step in rollout.steps] == [
        "pending",
        "building",
        "starting",
        "verifying",
        "switching",
        "baking",
    ]
    assert fake_backend.started == [("churn-prod.blue", "churn:v1")]
    blue = Slot.objects.get(deployment=deployment, color="blue")
    served = fake_backend.slots_by_key["churn-prod.blue"]
    assert (blue.state, blue.version, blue.url) == (SlotState.READY, v1, served.url)
    assert served.requests == [{"instances": [[0.0]]}]  # the smoke request reached the slot
    deployment.refresh_from_db()
    route = published(deployment)
    assert deployment.live_slot == "blue"
    assert (route.version, route.slot, route.upstream, route.state) == (1, "blue", blue.url, "live")


def test_the_next_rollout_goes_to_the_idle_slot_and_ends_the_previous_bake(
    fake_backend, deployment, operator
):
    v1, v2 = _version(deployment), _version(deployment)
    first = _rolled_out(deployment, v1, operator)

    second = _rolled_out(deployment, v2, operator)

    first.refresh_from_db()
    assert first.state == RolloutState.LIVE
    assert first.steps[-1]["message"] == "bake ended early: a new rollout started"
    assert (second.target_slot, second.previous_version, second.state) == (
        "green",
        v1,
        RolloutState.BAKING,
    )
    # The previous slot is kept warm while the new version bakes.
    assert fake_backend.slots_by_key["churn-prod.blue"].running
    assert published(deployment).slot == "green"


def test_when_the_bake_is_over_the_rollout_is_live_and_the_previous_slot_stops(
    fake_backend, deployment, operator
):
    v1, v2 = _version(deployment), _version(deployment)
    _rolled_out(deployment, v1, operator)
    rollout = _rolled_out(deployment, v2, operator)
    Rollout.objects.filter(pk=rollout.pk).update(bake_until=timezone.now() - timedelta(seconds=1))

    rollout = rollout_advance(rollout_id=rollout.pk)

    assert rollout.state == RolloutState.LIVE and rollout.finished_at is not None
    assert fake_backend.stopped == ["churn-prod.blue"]
    blue = Slot.objects.get(deployment=deployment, color="blue")
    assert (blue.state, blue.url) == (SlotState.STOPPED, "")


def test_a_baking_rollout_before_its_time_only_waits(fake_backend, deployment, operator):
    rollout = _rolled_out(deployment, _version(deployment), operator)

    again = rollout_advance(rollout_id=rollout.pk)

    assert again.state == RolloutState.BAKING and len(again.steps) == len(rollout.steps)
    assert fake_backend.stopped == []


def test_a_slot_that_never_gets_ready_fails_the_rollout_and_the_live_one_keeps_serving(
    fake_backend, deployment, operator
):
    v1, v2 = _version(deployment), _version(deployment)
    _rolled_out(deployment, v1, operator)
    fake_backend.refuse_start["churn:v2"] = "Traceback: ModuleNotFoundError: sklearn"

    rollout = _rolled_out(deployment, v2, operator)

    assert rollout.state == RolloutState.FAILED
    assert rollout.error.startswith("churn-prod.green did not start: slot churn-prod.green")
    assert "ModuleNotFoundError: sklearn" in rollout.error  # the server's log tail
    green = Slot.objects.get(deployment=deployment, color="green")
    assert green.state == SlotState.STOPPED
    deployment.refresh_from_db()
    assert deployment.live_slot == "blue" and published(deployment).version == 1
    assert fake_backend.slots_by_key["churn-prod.blue"].running


def test_a_refused_smoke_request_fails_the_rollout_in_the_slots_own_words(
    fake_backend, deployment, operator
):
    v1 = _version(deployment)
    fake_backend.answers["churn:v1"] = (
        422,
        {"error": {"code": "invalid_input", "message": "expected 4 features, got 1"}},
    )

    rollout = _rolled_out(deployment, v1, operator)

    assert rollout.state == RolloutState.FAILED
    assert rollout.error == (
        "smoke request to churn-prod.blue was refused (422): "
        "invalid_input: expected 4 features, got 1"
    )
    deployment.refresh_from_db()
    assert deployment.live_slot == "" and published(deployment) is None
    assert fake_backend.stopped == ["churn-prod.blue"]  # nothing serves: the slot is stopped


def test_a_production_deployment_refuses_a_version_nobody_approved(deployment, operator):
    validated = ModelVersionFactory(model=deployment.model, state=VersionState.VALIDATED)

    with pytest.raises(InvalidState) as refused:
        rollout_start(deployment=deployment, version_number=validated.number, actor=operator)

    assert refused.value.code == "version_not_deployable"
    assert not Rollout.objects.exists()


def test_a_staging_deployment_takes_a_validated_version(registered_model, operator):
    staging = DeploymentFactory(model=registered_model, environment="staging")
    validated = ModelVersionFactory(model=registered_model, state=VersionState.VALIDATED)

    rollout = rollout_start(deployment=staging, version_number=validated.number, actor=operator)

    assert (rollout.state, rollout.target_slot) == (RolloutState.PENDING, "blue")


def test_one_rollout_at_a_time_per_deployment(deployment, operator):
    running = RolloutFactory(deployment=deployment, state=RolloutState.VERIFYING)
    version = ModelVersionFactory(model=deployment.model)

    with pytest.raises(Conflict) as refused:
        rollout_start(deployment=deployment, version_number=version.number, actor=operator)

    assert refused.value.code == "rollout_in_progress"
    assert f"Rollout {running.pk}" in refused.value.message


def test_rolling_out_the_version_already_live_is_a_conflict(fake_backend, deployment, operator):
    v1 = _version(deployment)
    _rolled_out(deployment, v1, operator)

    with pytest.raises(Conflict) as refused:
        rollout_start(deployment=deployment, version_number=v1.number, actor=operator)

    assert refused.value.code == "already_live"


def test_advancing_a_finished_rollout_changes_nothing(fake_backend, deployment):
    done = RolloutFactory(deployment=deployment, state=RolloutState.FAILED)

    assert rollout_advance(rollout_id=done.pk).state == RolloutState.FAILED
    assert fake_backend.started == []


def test_a_move_the_rollout_table_refuses_raises_and_writes_nothing(deployment):
    from core.choices import AuditAction
    from core.models import AuditEvent
    from deployments.services._steps import transition

    rollout = RolloutFactory(deployment=deployment, state=RolloutState.LIVE, steps=[])
    before = Rollout.objects.get(pk=rollout.pk)

    with pytest.raises(InvalidState) as refused:
        transition(rollout, RolloutState.BUILDING, "build requested")

    assert refused.value.details == {"state": "live", "requested": "building"}
    row = Rollout.objects.get(pk=rollout.pk)
    assert (row.state, row.steps, row.state_changed_at) == ("live", [], before.state_changed_at)
    assert not AuditEvent.objects.filter(
        action=AuditAction.ROLLOUT_STATE_CHANGED, object_id=str(rollout.pk)
    ).exists()


def test_a_bake_ended_by_the_next_rollout_is_a_recorded_move(fake_backend, deployment, operator):
    from core.choices import AuditAction
    from core.models import AuditEvent

    first = _rolled_out(deployment, _version(deployment), operator)
    baking_since = first.state_changed_at

    rollout_start(deployment=deployment, version_number=_version(deployment).number, actor=operator)

    first.refresh_from_db()
    assert first.state == RolloutState.LIVE
    assert first.state_changed_at > baking_since and first.finished_at == first.state_changed_at
    assert first.steps[-1]["state"] == "live"
    assert first.steps[-1]["at"] == first.state_changed_at.isoformat()
    audits = AuditEvent.objects.filter(
        action=AuditAction.ROLLOUT_STATE_CHANGED, object_id=str(first.pk)
    ).order_by("id")
    assert audits.last().before == {"state": "baking"}
    assert audits.last().after == {"state": "live", "version": first.version.number}


def test_a_shadow_starts_its_slot_at_low_cpu_priority_and_a_promotion_restores_it(
    fake_backend, deployment, operator
):
    """A shadow only mirrors, so its servers never take CPU from live (RuntimeBackend's
    priority); promoted to a canary it answers users: normal priority again."""
    from deployments.choices import RolloutStrategy
    from deployments.services.progressive import shadow_to_canary

    v1 = _version(deployment)
    _rolled_out(deployment, v1, operator)
    assert fake_backend.priorities == {"churn-prod.blue": "normal"}
    Rollout.objects.filter(deployment=deployment).update(state=RolloutState.LIVE)  # baked
    v2 = _version(deployment)
    rollout = rollout_start(
        deployment=deployment,
        version_number=v2.number,
        actor=operator,
        strategy=RolloutStrategy.SHADOW,
        plan={"mirror_percent": 50},
    )
    rollout = rollout_advance(rollout_id=rollout.pk)
    assert rollout.state == RolloutState.SHADOW, rollout.steps[-1]
    assert fake_backend.priorities == {"churn-prod.blue": "normal", "churn-prod.green": "low"}
    rollout = shadow_to_canary(deployment=deployment, rollout_id=rollout.pk, actor=operator)
    assert rollout.state == RolloutState.CANARY
    assert fake_backend.priorities["churn-prod.green"] == "normal"
