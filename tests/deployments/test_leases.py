"""Work leases: a live worker's heartbeat keeps its build or rollout, a lapsed one hands the
work to the sweep in seconds with one event naming the dead worker (issue 22).

The heartbeat runs in a real thread on its own PostgreSQL connection; "a worker died" is a
lease nobody renews, exactly what a ``kill -9`` leaves (tests/devstack/test_worker_faults.py
kills real workers).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.choices import BuildState, RolloutState
from deployments.models import Build, DeploymentEvent, Rollout
from deployments.services import build_ensure, build_run, deployments_reconcile, rollout_advance
from deployments.services.builds import builds_abandoned_requeue
from deployments.services.leases import LeaseHeld, lease_kept, lease_take, leases_lapsed
from deployments.services.reconcile import rollouts_abandoned_resume
from tests.factories import ModelVersionFactory, RolloutFactory

pytestmark = pytest.mark.django_db

LONG_AGO = timedelta(seconds=30)


def _worker_died(deployment) -> list[str]:
    return list(
        DeploymentEvent.objects.filter(deployment=deployment, kind="worker_died").values_list(
            "message", flat=True
        )
    )


def test_a_build_whose_worker_died_is_queued_again_once_with_one_event_naming_it(
    registered_model, django_capture_on_commit_callbacks
):
    version = ModelVersionFactory(model=registered_model)
    waiting = RolloutFactory(
        deployment__model=registered_model, version=version, state=RolloutState.BUILDING
    )
    build = build_ensure(version=version)
    lapsed_at = timezone.now() - LONG_AGO
    Build.objects.filter(pk=build.pk).update(
        state=BuildState.BUILDING, lease_holder="build-host/4242", lease_until=lapsed_at
    )

    with django_capture_on_commit_callbacks() as queued:
        actions = builds_abandoned_requeue()
        again = builds_abandoned_requeue()  # the next sweep: nothing left to take over

    build.refresh_from_db()
    assert (build.state, build.lease_holder, build.lease_until) == (BuildState.PENDING, "", None)
    assert len(actions) == 1 and again == []
    assert len(queued) == 1  # one build task queued, after the sweep's commit
    (message,) = _worker_died(waiting.deployment)
    assert "build worker died" in message
    assert f"lease expired at {lapsed_at:%H:%M:%S}" in message
    assert "worker build-host/4242" in message


def test_a_build_under_a_live_workers_lease_is_left_to_it(registered_model):
    build = build_ensure(version=ModelVersionFactory(model=registered_model))
    Build.objects.filter(pk=build.pk).update(
        state=BuildState.BUILDING,
        lease_holder="build-host/1",
        lease_until=timezone.now() + timedelta(seconds=8),
    )

    assert builds_abandoned_requeue() == []
    assert Build.objects.get(pk=build.pk).state == BuildState.BUILDING


def test_a_build_left_building_with_no_lease_at_all_is_queued_again(registered_model):
    build = build_ensure(version=ModelVersionFactory(model=registered_model))
    Build.objects.filter(pk=build.pk).update(state=BuildState.BUILDING)  # before leases existed

    (action,) = builds_abandoned_requeue()

    assert "left building with no worker" in action
    assert Build.objects.get(pk=build.pk).state == BuildState.PENDING


@pytest.mark.parametrize("state", [RolloutState.STARTING, RolloutState.SWITCHING])
def test_a_rollout_whose_worker_died_mid_step_is_resumed_once_with_one_event(
    registered_model, fake_backend, state, django_capture_on_commit_callbacks
):
    rollout = RolloutFactory(deployment__model=registered_model, state=state)
    Rollout.objects.filter(pk=rollout.pk).update(
        lease_holder="rollout-host/77", lease_until=timezone.now() - LONG_AGO
    )

    with django_capture_on_commit_callbacks() as queued:
        actions = deployments_reconcile()
    assert rollouts_abandoned_resume() == []  # the next sweep

    assert f"rollout {rollout.pk}: rollout worker died" in " ".join(actions)
    assert len(queued) == 1  # the rollout's advance, queued again
    rollout.refresh_from_db()
    assert (rollout.state, rollout.lease_holder) == (state, "")
    (message,) = _worker_died(rollout.deployment)
    assert "worker rollout-host/77" in message and f"in {state}" in message


def test_a_rollout_held_by_a_live_worker_is_not_driven_by_a_second_one(registered_model):
    rollout = RolloutFactory(deployment__model=registered_model, state=RolloutState.STARTING)
    Rollout.objects.filter(pk=rollout.pk).update(
        lease_holder="rollout-host/1", lease_until=timezone.now() + timedelta(seconds=8)
    )

    with pytest.raises(LeaseHeld, match="rollout-host/1"):
        rollout_advance(rollout_id=rollout.pk, holder="rollout-host/2")

    assert rollouts_abandoned_resume() == []
    assert Rollout.objects.get(pk=rollout.pk).lease_holder == "rollout-host/1"


def test_a_finished_rollout_needs_no_lease_and_a_driven_one_gives_its_lease_back(
    registered_model, fake_backend
):
    live = RolloutFactory(deployment__model=registered_model, state=RolloutState.LIVE)
    assert rollout_advance(rollout_id=live.pk, holder="h/1").state == RolloutState.LIVE

    failed_build = RolloutFactory(deployment__model=registered_model, state=RolloutState.BUILDING)
    Build.objects.create(version=failed_build.version, state=BuildState.FAILED, error="boom")
    assert rollout_advance(rollout_id=failed_build.pk, holder="h/1").state == RolloutState.FAILED
    assert Rollout.objects.get(pk=failed_build.pk).lease_holder == ""


def test_a_build_that_crashes_fails_instead_of_being_queued_again_and_again(
    registered_model, monkeypatch
):
    from deployments.integrations import bentoml as bento

    def crashing_build(**_: object) -> None:
        raise RuntimeError("the store is corrupted")

    # The engine's one module, failing the way no BentoError covers (a bug, a broken store).
    monkeypatch.setattr(bento, "bento_build", crashing_build)
    build = build_ensure(
        version=ModelVersionFactory(model=registered_model, artifact=b"model bytes")
    )

    assert build_run(build_id=build.pk, holder="h/1").state == BuildState.FAILED
    build.refresh_from_db()
    assert build.error == "build crashed: RuntimeError: the store is corrupted", build.error
    assert (build.lease_holder, builds_abandoned_requeue()) == ("", [])


@pytest.mark.django_db(transaction=True)
def test_a_live_worker_keeps_renewing_its_lease_so_the_sweep_never_takes_it(
    registered_model, settings
):
    settings.MODELYARD_WORK_LEASE_SECONDS = 3
    build = build_ensure(version=ModelVersionFactory(model=registered_model))
    Build.objects.filter(pk=build.pk).update(state=BuildState.BUILDING)
    assert lease_take(queryset=Build.objects.all(), pk=build.pk, holder="me/1")
    building = Build.objects.filter(state=BuildState.BUILDING)

    with lease_kept(model=Build, pk=build.pk, holder="me/1") as renewer:
        deadline = time.monotonic() + 7  # more than twice the lease
        while time.monotonic() < deadline:
            assert leases_lapsed(building, unheld_counts=True) == []
            time.sleep(0.5)
        assert not renewer.lost

    build.refresh_from_db()
    assert (build.lease_holder, build.lease_until) == ("", None)  # released at the end
    # Without the heartbeat the same lease lapses, and the sweep sees it.
    assert lease_take(queryset=Build.objects.all(), pk=build.pk, holder="me/1")
    time.sleep(3.5)
    (lapsed,) = leases_lapsed(building, unheld_counts=True)
    assert lapsed.holder == "me/1"
