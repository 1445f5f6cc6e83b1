"""Faults converge: kill -9 of a serving process or of the worker mid-rollout, Redis restart."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from deployments import backends
from deployments.models import Build, DeploymentEvent, Rollout
from deployments.services import deployments_reconcile
from tests.deployments.flows import _predict, _roll_out, churn_deployment

pytestmark = pytest.mark.stack


def _deployment(http, stack, versions=1):
    flow = churn_deployment(http, stack, versions=versions, rows=3)
    return flow.base, flow.ops, flow.key, flow.rows


def _converge(until, timeout=90, what="", stack=None):
    """Run the reconcile sweep (as beat does) until ``until()`` holds; with ``stack``, also
    restart its worker if it exited (as the production process supervisor does)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"did not converge: {what}"
        if stack is not None:
            stack.worker_supervise()
        deployments_reconcile()
        time.sleep(0.5)


def test_killed_serving_process_is_restarted_and_recorded(live_stack):
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack)
        _roll_out(http, base, ops, 1, live_stack)
        status = backends.runtime_backend().slot_status(slot_key="churn-prod.blue")
        server = psutil.Process(status.pid)
        for proc in [*server.children(recursive=True), server]:
            proc.kill()  # kill -9 the whole serving tree
        psutil.wait_procs([server], timeout=10)
        assert (
            http.post(
                f"{live_stack.gateway}/d/churn-prod/predict",
                headers={"Authorization": f"Bearer {key}"},
                json={"instances": rows},
            ).status_code
            == 502
        )

        def serving():
            try:
                return _predict(http, live_stack.gateway, key, rows)[0] == 1
            except AssertionError:
                return False

        _converge(serving, what="slot restarted")
    kinds = set(DeploymentEvent.objects.values_list("kind", flat=True))
    assert {"slot_crashed", "slot_restarted"} <= kinds, kinds


@pytest.mark.stack_env(MODELYARD_ROLLOUT_STUCK_SECONDS=3, MODELYARD_BUILD_STALE_SECONDS=3)
def test_worker_killed_during_build_converges(live_stack):
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack)
        started = http.post(
            f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": 1}
        )
        rollout_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while not Build.objects.filter(state="building").exists():
            assert time.monotonic() < deadline, "build never started"
            time.sleep(0.01)
        live_stack.worker_kill()
        assert Rollout.objects.get(pk=rollout_id).state in ("building", "starting")
        live_stack.worker_start()
        _converge(
            lambda: Rollout.objects.get(pk=rollout_id).state in ("baking", "failed"),
            what="rollout after killed build",
        )
        assert Rollout.objects.get(pk=rollout_id).state == "baking"
        assert _predict(http, live_stack.gateway, key, rows)[0] == 1
    assert Build.objects.get().state == "succeeded"
    assert DeploymentEvent.objects.filter(kind="rollout_resumed").exists()


@pytest.mark.stack_env(MODELYARD_ROLLOUT_STUCK_SECONDS=3)
def test_worker_killed_while_starting_the_slot_converges(live_stack):
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack, versions=2)
        _roll_out(http, base, ops, 1, live_stack)
        started = http.post(
            f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": 2}
        )
        rollout_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while Rollout.objects.get(pk=rollout_id).state != "starting":
            assert time.monotonic() < deadline, "rollout never reached starting"
            time.sleep(0.01)
        live_stack.worker_kill()  # mid `bentoml serve` start-up of the green slot
        assert _predict(http, live_stack.gateway, key, rows)[0] == 1  # traffic unaffected
        live_stack.worker_start()
        _converge(
            lambda: Rollout.objects.get(pk=rollout_id).state in ("baking", "failed"),
            what="rollout after killed start",
        )
        assert Rollout.objects.get(pk=rollout_id).state == "baking"
        assert _predict(http, live_stack.gateway, key, rows)[0] == 2
        # No second server for the slot: exactly one process tree is marked green.
        green = backends.runtime_backend().slot_status(slot_key="churn-prod.green")
        assert green.running and green.ready


@pytest.mark.stack_private_redis
def test_redis_restart_loses_nothing(live_stack):
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack, versions=2)
        _roll_out(http, base, ops, 1, live_stack)
        live_stack.redis_restart()  # every route, queue and buffer in Redis is gone
        assert _predict(http, live_stack.gateway, key, rows)[0] == 1  # gateway memory
        _converge(
            lambda: backends.route_store().hget("modelyard:routes", "churn-prod"),
            what="route republished",
            stack=live_stack,
        )
        assert DeploymentEvent.objects.filter(kind="route_republished").exists()
        # The worker reconnects (or, if kombu gave up, its supervisor restarts it, and the
        # sweep resumes what its dead predecessor left): a new rollout still goes all the way.
        started = http.post(
            f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": 2}
        )
        assert started.status_code == 202, started.text
        rollout_id = started.json()["id"]
        _converge(
            lambda: Rollout.objects.get(pk=rollout_id).state in ("baking", "failed"),
            timeout=180,
            what="rollout after Redis restart",
            stack=live_stack,
        )
        assert Rollout.objects.get(pk=rollout_id).state == "baking"
        assert _predict(http, live_stack.gateway, key, rows)[0] == 2
