"""build_claim on its own: one worker builds a version, a build abandoned by a dead worker is
taken over, and a redelivered build task reuses the finished build."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.choices import BuildState
from deployments.models import Build
from deployments.services import build_claim, build_ensure, build_run
from tests.deployments.conftest import built
from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db


def test_a_pending_build_is_claimed_by_one_worker_only_under_its_lease():
    build = build_ensure(version=ModelVersionFactory())

    assert build_claim(build_id=build.pk, holder="host-a/1") is True
    assert build_claim(build_id=build.pk, holder="host-b/2") is False

    build.refresh_from_db()
    assert build.state == BuildState.BUILDING and build.started_at is not None
    assert build.lease_holder == "host-a/1" and build.lease_until > timezone.now()


def test_ensuring_a_build_twice_is_the_same_build():
    version = ModelVersionFactory()

    assert build_ensure(version=version) == build_ensure(version=version)
    assert Build.objects.count() == 1


def test_a_building_build_is_never_claimed_even_with_its_lease_lapsed():
    # Only the sweep decides a worker is dead (builds_abandoned_requeue, tests/deployments/
    # test_leases.py): a redelivered message never takes the build over by itself.
    build = build_ensure(version=ModelVersionFactory())
    Build.objects.filter(pk=build.pk).update(
        state=BuildState.BUILDING,
        lease_holder="dead-host/1",
        lease_until=timezone.now() - timedelta(minutes=5),
    )

    assert build_claim(build_id=build.pk, holder="host-b/2") is False


def test_a_build_running_elsewhere_is_not_claimed_and_not_rerun():
    build = build_ensure(version=ModelVersionFactory())
    Build.objects.filter(pk=build.pk).update(
        state=BuildState.BUILDING,
        started_at=timezone.now(),
        lease_holder="host-a/1",
        lease_until=timezone.now() + timedelta(seconds=10),
    )

    assert build_claim(build_id=build.pk, holder="host-b/2") is False
    assert build_run(build_id=build.pk).state == BuildState.BUILDING


@pytest.mark.parametrize("state", [BuildState.SUCCEEDED, BuildState.FAILED])
def test_a_finished_build_is_never_claimed_again(state):
    build = build_ensure(version=ModelVersionFactory())
    Build.objects.filter(pk=build.pk).update(state=state)

    assert build_claim(build_id=build.pk, holder="host-a/1") is False


def test_a_redelivered_build_task_returns_the_finished_build_untouched(fake_backend):
    build = built(ModelVersionFactory())
    Build.objects.filter(pk=build.pk).update(archive_path="bentos/1/v1.bento")

    again = build_run(build_id=build.pk)

    assert (again.state, again.bento_tag, again.archive_path) == (
        BuildState.SUCCEEDED,
        build.bento_tag,
        "bentos/1/v1.bento",
    )
