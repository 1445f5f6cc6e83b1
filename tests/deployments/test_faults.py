"""Faults converge: kill -9 of a serving process or of the worker mid-rollout, Redis restart."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from core.choices import AuditAction
from core.models import AuditEvent
from deployments import backends
from deployments.models import Build, Deployment, DeploymentEvent, Rollout
from deployments.services import deployment_rollback, deployments_reconcile, route_repair
from gateway.routes import ROUTES_KEY, route_parse_one
from tests.deployments.flows import _gateway_settles_on, _predict, _roll_out, churn_deployment

pytestmark = pytest.mark.stack

# Where the worker's test-only pause hook (deployments.services._steps.pause_for_tests) waits; fixed
# per test process because stack_env markers are evaluated at import.
PAUSE_DIR = Path(tempfile.gettempdir()) / f"modelyard-test-pause-{os.getpid()}"


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
            == 503  # upstream_unavailable: the gateway saw the dead replica (never a 502)
        )

        def serving():
            try:
                return _predict(http, live_stack.gateway, key, rows)[0] == 1
            except AssertionError:
                return False

        _converge(serving, what="slot restarted")
    kinds = set(DeploymentEvent.objects.values_list("kind", flat=True))
    assert {"slot_crashed", "slot_restarted"} <= kinds, kinds


@pytest.mark.stack_env(
    MODELYARD_ROLLOUT_STUCK_SECONDS=3,
    MODELYARD_WORK_LEASE_SECONDS=3,
    MODELYARD_TEST_PAUSE_DIR=str(PAUSE_DIR),
)
def test_worker_killed_during_build_converges(live_stack):
    PAUSE_DIR.mkdir(exist_ok=True)
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack)
        # The build holds still once claimed: a Bento reused from an earlier test of the
        # session would otherwise be built (and the window gone) within milliseconds.
        (PAUSE_DIR / "arm-build").touch()
        started = http.post(
            f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": 1}
        )
        rollout_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while not list(PAUSE_DIR.glob("build-*")):
            assert time.monotonic() < deadline, "build never started"
            time.sleep(0.01)
        assert Build.objects.get().state == "building"
        live_stack.worker_kill()
        for hold in PAUSE_DIR.glob("build-*"):
            hold.unlink()
        assert Rollout.objects.get(pk=rollout_id).state in ("building", "starting")
        live_stack.worker_start()
        _converge(
            lambda: Rollout.objects.get(pk=rollout_id).state in ("baking", "failed"),
            what="rollout after killed build",
        )
        assert Rollout.objects.get(pk=rollout_id).state == "baking"
        assert _predict(http, live_stack.gateway, key, rows)[0] == 1
    assert Build.objects.get().state == "succeeded"
    # The dead worker's build was taken over once its lease lapsed, and said so once.
    (died,) = DeploymentEvent.objects.filter(kind="worker_died").values_list("message", flat=True)
    assert died.startswith("build worker died (lease expired at"), died


# No short MODELYARD_ROLLOUT_STUCK_SECONDS: the dead worker's lapsed lease alone resumes it.
@pytest.mark.stack_env(MODELYARD_WORK_LEASE_SECONDS=3)
def test_worker_killed_while_starting_the_slot_converges(live_stack):
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack, versions=2)
        _roll_out(http, base, ops, 1, live_stack)
        # Slot servers outlive a test (runtime state is per session): a green server an
        # earlier test left serving v2 would make this start a no-op, over before it is seen.
        backends.runtime_backend().slot_stop(slot_key="churn-prod.green")
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
    (died,) = DeploymentEvent.objects.filter(kind="worker_died").values_list("message", flat=True)
    assert f"holding rollout {rollout_id} of v2 in starting" in died, died


def _stored_route(deployment: str):
    return route_parse_one(deployment, backends.route_store().hget(ROUTES_KEY, deployment))


@pytest.mark.stack_env(MODELYARD_WORK_LEASE_SECONDS=3, MODELYARD_TEST_PAUSE_DIR=str(PAUSE_DIR))
def test_worker_killed_while_switching_converges_with_route_and_database_agreeing(live_stack):
    PAUSE_DIR.mkdir(exist_ok=True)
    with httpx.Client(timeout=60) as http:
        base, ops, key, rows = _deployment(http, live_stack, versions=2)
        _roll_out(http, base, ops, 1, live_stack)
        (PAUSE_DIR / "arm-switching").touch()  # the next switching step holds still
        started = http.post(
            f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": 2}
        )
        rollout_id = started.json()["id"]
        hold = PAUSE_DIR / f"switching-{rollout_id}"
        deadline = time.monotonic() + 180
        while not hold.exists():
            assert time.monotonic() < deadline, live_stack["worker_log"].read_text()[-3000:]
            time.sleep(0.02)
        # Inside the switch: the route already points at green (published in the switching
        # transaction), the database still says blue and `switching` (not committed yet).
        assert Rollout.objects.get(pk=rollout_id).state == "switching"
        assert Deployment.objects.get(name="churn-prod").live_slot == "blue"
        assert _stored_route("churn-prod").slot == "green"
        live_stack.worker_kill()  # kill -9 mid-switch: its transaction dies with it
        hold.unlink()
        assert Rollout.objects.get(pk=rollout_id).state == "switching"
        assert Deployment.objects.get(name="churn-prod").live_slot == "blue"
        live_stack.worker_start()
        _converge(
            lambda: Rollout.objects.get(pk=rollout_id).state in ("baking", "failed"),
            what="rollout after a worker killed while switching",
        )
        rollout = Rollout.objects.get(pk=rollout_id)
        assert rollout.state == "baking", rollout.steps
        deployment = Deployment.objects.get(name="churn-prod")
        # One live slot, and the route says exactly what the database says.
        assert deployment.live_slot == "green"
        route = _stored_route("churn-prod")
        assert (route.slot, route.version, route.state) == ("green", 2, "live")
        assert route_repair(deployment=deployment) is False
        _gateway_settles_on(http, live_stack.gateway, key, rows, 2)
        # Nothing lost or doubled: one switch in the step log, one rollout of v2, and events
        # that say what the sweep did.
        switched = [s for s in rollout.steps if s["message"].startswith("traffic switched")]
        assert len(switched) == 1, rollout.steps
        assert Rollout.objects.filter(deployment=deployment, version__number=2).count() == 1
        kinds = set(DeploymentEvent.objects.values_list("kind", flat=True))
        assert {"route_republished", "worker_died"} <= kinds, kinds
        states = list(
            AuditEvent.objects.filter(
                action=AuditAction.ROLLOUT_STATE_CHANGED, object_id=str(rollout_id)
            ).values_list("after__state", flat=True)
        )
        assert states.count("baking") == 1, states

        # A rollback whose records fail to write after the route flipped puts the route back.
        blue = deployment.slots.get(color="blue")
        assert backends.runtime_backend().slot_serving(
            slot_key=blue.runtime_key, bento_tag=blue.bento_tag
        ), "blue must be warm, or the rollback would not flip the route first"
        with pytest.raises(TypeError):
            deployment_rollback(
                deployment=deployment, actor=None, evidence={"unserialisable": object()}
            )
        assert Deployment.objects.get(name="churn-prod").live_slot == "green"
        route = _stored_route("churn-prod")
        assert (route.slot, route.version) == ("green", 2)
        # The flip to v1 was announced before the failure put the route back: the gateway may
        # apply the two announcements a moment after this call returns, in order.
        _gateway_settles_on(http, live_stack.gateway, key, rows, 2)
        assert not Rollout.objects.filter(kind="rollback").exists()


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
        )
        assert DeploymentEvent.objects.filter(kind="route_republished").exists()
        # The worker reconnects by itself (config/celery_app.py: broker connection retried
        # forever): no supervisor restarts it here, and a new rollout still goes all the way.
        started = http.post(
            f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": 2}
        )
        assert started.status_code == 202, started.text
        rollout_id = started.json()["id"]
        _converge(
            lambda: Rollout.objects.get(pk=rollout_id).state in ("baking", "failed"),
            timeout=180,
            what="rollout after Redis restart",
        )
        assert Rollout.objects.get(pk=rollout_id).state == "baking"
        assert _predict(http, live_stack.gateway, key, rows)[0] == 2
        # The very worker process that saw Redis go away is still the one running.
        assert live_stack.worker_starts == 1
        assert live_stack.procs["worker"].poll() is None
        assert "Connection to broker lost" in live_stack["worker_log"].read_text()
