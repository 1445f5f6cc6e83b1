"""deployment_rollback on its own, with the runtime in memory: warm and cold, and the one rule
(selectors.rollback_target_version) that the service and the confirmation page share."""

from __future__ import annotations

import pytest

from core.errors import Conflict, InvalidState
from deployments import selectors
from deployments.choices import RolloutKind, RolloutState
from deployments.models import Deployment, Rollout
from deployments.services import deployment_rollback, rollout_advance, rollout_start
from tests.deployments.conftest import built, published
from tests.factories import DeploymentFactory, ModelVersionFactory, SlotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(registered_model) -> Deployment:
    return DeploymentFactory(name="churn-prod", model=registered_model, bake_seconds=600)


def _roll_out(deployment, operator, *, versions: int) -> list:
    made = []
    for _ in range(versions):
        version = ModelVersionFactory(model=deployment.model, artifact=b"model bytes")
        built(version)
        rollout = rollout_start(
            deployment=deployment, version_number=version.number, actor=operator
        )
        assert rollout_advance(rollout_id=rollout.pk).state == RolloutState.BAKING
        made.append(version)
    return made


def _page_target(deployment: Deployment):
    return selectors.deployment_rollback_target(
        deployment=selectors.deployment_get(name=deployment.name)
    )


def test_a_warm_rollback_flips_the_route_at_once_and_bakes(fake_backend, deployment, operator):
    v1, v2 = _roll_out(deployment, operator, versions=2)  # v1 on blue, v2 live on green
    assert _page_target(deployment) == (v2, v1)

    rollback = deployment_rollback(deployment=deployment, actor=operator, reason="p99 breach")

    assert (rollback.kind, rollback.version, rollback.previous_version) == (
        RolloutKind.ROLLBACK,
        v1,
        v2,
    )
    assert rollback.state == RolloutState.BAKING and rollback.target_slot == "blue"
    assert "(slot warm: instant switch)" in rollback.steps[0]["message"]
    deployment.refresh_from_db()
    route = published(deployment)
    assert deployment.live_slot == "blue"
    assert (route.version, route.upstream) == (1, fake_backend.slots_by_key["churn-prod.blue"].url)
    assert Rollout.objects.get(version=v2).state == RolloutState.ROLLED_BACK
    assert fake_backend.started == [
        ("churn-prod.blue", "churn:v1"),
        ("churn-prod.green", "churn:v2"),
    ]


def test_a_cold_rollback_starts_the_previous_slot_before_traffic_moves(
    fake_backend, deployment, operator
):
    v1, _ = _roll_out(deployment, operator, versions=2)
    fake_backend.slot_stop(slot_key="churn-prod.blue")  # its server died since

    rollback = deployment_rollback(deployment=deployment, actor=operator)

    assert (rollback.version, rollback.state) == (v1, RolloutState.STARTING)
    assert "(slot cold: starting it first)" in rollback.steps[0]["message"]
    deployment.refresh_from_db()
    assert deployment.live_slot == "green" and published(deployment).version == 2

    rollback = rollout_advance(rollout_id=rollback.pk)

    assert rollback.state == RolloutState.BAKING
    deployment.refresh_from_db()
    assert deployment.live_slot == "blue" and published(deployment).version == 1


def test_with_the_idle_slot_empty_the_last_rollouts_previous_version_is_the_target(
    fake_backend, deployment, operator
):
    v1, v2 = _roll_out(deployment, operator, versions=2)
    SlotFactory(deployment=deployment, color="blue", version=None, state="stopped", url="")

    assert _page_target(deployment) == (v2, v1)
    rollback = deployment_rollback(deployment=deployment, actor=operator)

    assert (rollback.version, rollback.state) == (v1, RolloutState.STARTING)


def test_the_first_version_has_nothing_to_roll_back_to(fake_backend, deployment, operator):
    _roll_out(deployment, operator, versions=1)

    assert _page_target(deployment)[1] is None
    with pytest.raises(InvalidState, match="no previous version"):
        deployment_rollback(deployment=deployment, actor=operator)


def test_a_deployment_that_serves_nothing_cannot_roll_back(fake_backend, deployment, operator):
    assert _page_target(deployment) == (None, None)
    with pytest.raises(InvalidState, match="serves nothing yet"):
        deployment_rollback(deployment=deployment, actor=operator)


def test_a_rollout_that_has_not_moved_traffic_blocks_a_rollback(fake_backend, deployment, operator):
    _roll_out(deployment, operator, versions=2)
    v3 = ModelVersionFactory(model=deployment.model)
    rollout_start(deployment=deployment, version_number=v3.number, actor=operator)  # pending

    with pytest.raises(Conflict) as refused:
        deployment_rollback(deployment=deployment, actor=operator)

    assert refused.value.code == "rollout_in_progress"
    deployment.refresh_from_db()
    assert deployment.live_slot == "green" and published(deployment).version == 2
