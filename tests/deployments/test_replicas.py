"""Replicas through the services with the runtime in memory: routes, scaling, repair, autoscaler.

The fake backend serves every replica on a real socket of its own, so routes point at servers
that answer, and a "killed" replica is one the test marks dead (its /readyz then refuses).
"""

from __future__ import annotations

import json
import time

import pytest

from deployments import backends
from deployments.choices import RolloutState
from deployments.models import Deployment, DeploymentEvent, Slot
from deployments.services import (
    autoscale_decide,
    deployment_rollback,
    deployments_autoscale,
    deployments_reconcile,
    rollout_advance,
    rollout_start,
    slot_replicas_sync,
    slot_scale,
    upstream_repair,
)
from deployments.services.autoscale import WINDOWS_PREFIX, ScaleWindows
from gateway.replica_reports import inflight_key
from tests.deployments.conftest import built, published
from tests.factories import DeploymentFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def live(registered_model, operator, fake_backend) -> Deployment:
    """`churn-prod` serving v1 on its blue slot with 2 replicas (range 2-4), baking."""
    deployment = DeploymentFactory(
        name="churn-prod",
        model=registered_model,
        bake_seconds=600,
        replicas_min=2,
        replicas_max=4,
        workers=2,
        batch_max_size=8,
        batch_max_latency_ms=4,
        scale_target_inflight=4.0,
        scale_up_seconds=10,
        scale_down_seconds=60,
    )
    version = ModelVersionFactory(model=registered_model, artifact=b"model bytes")
    built(version)
    rollout = rollout_start(deployment=deployment, version_number=version.number, actor=operator)
    assert rollout_advance(rollout_id=rollout.pk).state == RolloutState.BAKING
    deployment.refresh_from_db()
    yield deployment
    backends.route_store().delete(inflight_key("churn-prod"), WINDOWS_PREFIX + "churn-prod")


def blue(deployment: Deployment) -> Slot:
    return Slot.objects.select_related("deployment").get(deployment=deployment, color="blue")


def report_inflight(deployment: str, loads: dict[str, float]) -> None:
    """What a gateway's in-flight report holds (gateway.replica_reports' layout)."""
    now = time.time()
    store = backends.route_store()
    store.hset(
        inflight_key(deployment),
        mapping={
            f"{url}|gw-test": json.dumps({"inflight": load, "peak": int(load), "at": now})
            for url, load in loads.items()
        },
    )


def test_rollout_starts_the_minimum_replicas_with_the_deployments_workers(live, fake_backend):
    served = fake_backend.slots_by_key["churn-prod.blue"]
    assert (len(served.servers), served.workers) == (2, 2)
    slot = blue(live)
    assert [(r["url"], r["state"]) for r in slot.replicas] == [(u, "ready") for u in served.urls]
    route = published(live)
    assert route.upstreams == tuple(served.urls) and route.upstream == served.urls[0]
    # The deployment's adaptive batching reaches the backend with the start.
    assert fake_backend.batches["churn-prod.blue"] == (8, 4)


def test_route_lists_only_ready_replicas_and_follows_readiness(live, fake_backend):
    served = fake_backend.slots_by_key["churn-prod.blue"]
    fake_backend.kill_replica("churn-prod.blue", 0)
    deployments_reconcile()
    assert published(live).upstreams == (served.urls[1],)
    assert blue(live).url == served.urls[1]
    fake_backend.kill_replica("churn-prod.blue", 1)
    deployments_reconcile()
    assert published(live).state == "none"  # no ready replica: 503 at the gateway, not 502
    fake_backend.slots_by_key["churn-prod.blue"].dead.clear()
    deployments_reconcile()
    assert published(live).upstreams == tuple(served.urls)
    assert slot_replicas_sync(slot_id=blue(live).pk) is False  # nothing changed: no republish


def test_repair_restarts_the_dead_replica_once_with_one_event(live, fake_backend):
    served = fake_backend.slots_by_key["churn-prod.blue"]
    dead_url = served.urls[1]
    fake_backend.kill_replica("churn-prod.blue", 1)
    # The fake's "dead" replica still listens: make /readyz refuse as a dead server's port does.
    served.servers[1].shutdown()
    served.servers[1].server_close()

    outcome = upstream_repair(deployment="churn-prod", upstream=dead_url, reason="refused")
    assert outcome == "repaired"
    [event] = DeploymentEvent.objects.filter(deployment=live, kind__startswith="replica_")
    assert event.kind == "replica_repaired" and event.slot == "blue"
    assert dead_url in event.message and "refused reported by the gateway" in event.message
    assert fake_backend.repaired == [("churn-prod.blue", 1)]
    # Back in the route once the backend says it is ready again.
    assert dead_url in published(live).upstreams

    # A burst of requests for the same replica after it was repaired: nothing more happens
    # (the fake's replica 1 is not dead any more; its socket is closed, so the probe fails
    # and the backend is asked -- and answers that it is fine).
    for _ in range(3):
        assert upstream_repair(deployment="churn-prod", upstream=dead_url, reason="reset") in (
            "healthy",
        )
    assert DeploymentEvent.objects.filter(kind__startswith="replica_").count() == 1
    assert upstream_repair(deployment="churn-prod", upstream="http://127.0.0.1:9", reason="x") == (
        "unknown upstream"
    )
    assert upstream_repair(deployment="nope", upstream=dead_url, reason="x") == "unknown upstream"


def test_scale_up_joins_the_route_and_scale_down_leaves_it_first(live, fake_backend):
    slot = blue(live)
    assert slot_scale(slot=slot, replicas=3) == 2
    served = fake_backend.slots_by_key["churn-prod.blue"]
    assert published(live).upstreams == tuple(served.urls) and len(served.urls) == 3
    leaving = served.urls[2]

    published_before_stop: list[tuple[str, ...]] = []
    original = fake_backend.slot_scale

    def scale_watching_route(**kwargs):
        published_before_stop.append(published(live).upstreams)
        return original(**kwargs)

    fake_backend.slot_scale = scale_watching_route
    assert slot_scale(slot=blue(live), replicas=2) == 3
    # The route had already dropped the leaving replica when the backend stopped it.
    assert published_before_stop == [tuple(served.urls[:2])]
    assert leaving not in published(live).upstreams
    assert [r["state"] for r in blue(live).replicas] == ["ready", "ready"]


def test_autoscaler_scales_up_after_its_window_and_records_the_load(live, fake_backend):
    urls = fake_backend.slots_by_key["churn-prod.blue"].urls
    report_inflight("churn-prod", {urls[0]: 9.0, urls[1]: 8.0})  # 17 in flight: desired 4 (max)
    start = time.time()
    assert deployments_autoscale(now=start) == []  # the window starts
    assert deployments_autoscale(now=start + 5) == []
    [line] = deployments_autoscale(now=start + 10)
    assert "2 -> 4 replicas" in line
    assert len(fake_backend.slots_by_key["churn-prod.blue"].urls) == 4
    [event] = DeploymentEvent.objects.filter(deployment=live, kind="autoscaled")
    assert "17.0 requests in flight" in event.message and event.slot == "blue"
    assert len(published(live).upstreams) == 4


def test_a_range_set_back_to_one_replica_scales_the_live_slot_down_to_one(live, fake_backend):
    Deployment.objects.filter(pk=live.pk).update(replicas_min=1, replicas_max=1)
    [line] = deployments_autoscale(now=time.time())
    assert "2 -> 1 replicas" in line
    assert len(fake_backend.slots_by_key["churn-prod.blue"].urls) == 1
    assert len(published(live).upstreams) == 1
    assert deployments_autoscale(now=time.time() + 5) == []  # one replica now: left alone


def test_rollback_to_a_warm_slot_runs_its_replicas(live, fake_backend, operator):
    v2 = ModelVersionFactory(model=live.model, artifact=b"model two")
    built(v2)
    rollout = rollout_start(deployment=live, version_number=v2.number, actor=operator)
    assert rollout_advance(rollout_id=rollout.pk).state == RolloutState.BAKING
    green = fake_backend.slots_by_key["churn-prod.green"]
    assert len(green.servers) == 2  # as many as the live slot ran
    deployment_rollback(deployment=Deployment.objects.get(pk=live.pk), actor=operator)
    served = fake_backend.slots_by_key["churn-prod.blue"]
    assert published(live).slot == "blue" and published(live).upstreams == tuple(served.urls)


WINDOWS = {"up_seconds": 10, "down_seconds": 60, "target_inflight": 4.0}


def decide(current, inflight, now, windows=ScaleWindows(), lo=1, hi=5):
    return autoscale_decide(
        current=current,
        inflight=inflight,
        replicas_min=lo,
        replicas_max=hi,
        now=now,
        windows=windows,
        **WINDOWS,
    )


def test_decision_scales_up_only_after_the_up_window():
    first = decide(1, 10.0, now=100)
    assert (first.desired, first.scale_to) == (3, None)
    assert decide(1, 10.0, now=105, windows=first.windows).scale_to is None
    assert decide(1, 10.0, now=110, windows=first.windows).scale_to == 3
    # A dip back to the current count resets the window.
    calm = decide(1, 3.0, now=106, windows=first.windows)
    assert calm.windows == ScaleWindows()
    assert decide(1, 10.0, now=110, windows=calm.windows).scale_to is None


def test_decision_scales_down_to_the_highest_desire_of_the_down_window():
    windows = ScaleWindows()
    for at, load in ((0, 1.0), (20, 7.0), (40, 2.0)):
        decision = decide(4, load, now=at, windows=windows)
        assert decision.scale_to is None
        windows = decision.windows
    final = decide(4, 1.0, now=60, windows=windows)
    assert (final.desired, final.scale_to) == (1, 2)  # 7 in flight at t=20 wanted 2


def test_decision_clamps_to_the_range_and_follows_a_changed_range_at_once():
    assert decide(1, 100.0, now=0).desired == 5
    assert decide(1, 0.0, now=0, lo=2, hi=3).scale_to == 2  # below the new minimum
    assert decide(6, 0.0, now=0).scale_to == 5  # above the new maximum
    assert decide(2, 8.0, now=0).scale_to is None  # exactly on target: stay


def test_api_and_page_show_each_replica_and_the_autoscaled_event(
    live, fake_backend, operator, api_for, client
):
    urls = fake_backend.slots_by_key["churn-prod.blue"].urls
    fake_backend.kill_replica("churn-prod.blue", 1)
    deployments_reconcile()
    body = api_for(operator).get("/api/v1/deployments/churn-prod/").json()
    [slot] = [s for s in body["slots"] if s["color"] == "blue"]
    assert slot["replicas"] == [
        {"index": 0, "url": urls[0], "state": "ready"},
        {"index": 1, "url": urls[1], "state": "dead"},
    ]
    DeploymentEvent.objects.create(deployment=live, kind="autoscaled", message="2 -> 3 replicas")
    client.force_login(operator)
    page = client.get("/deployments/churn-prod/").content.decode()
    assert 'title="{}">ready</span>, <span class="ops-state" title="{}">dead'.format(*urls) in page
    assert "autoscaled: 2 -&gt; 3 replicas" in page


def test_repair_and_autoscale_tasks_are_registered_routed_and_scheduled(settings):
    from config.celery_app import app
    from gateway.replica_reports import REPAIR_QUEUE, REPAIR_TASK

    app.loader.import_default_modules()
    assert {REPAIR_TASK, "deployments.autoscale"} <= set(app.tasks)
    queue_of = app.amqp.router.route
    assert queue_of({}, REPAIR_TASK, (), {})["queue"].name == REPAIR_QUEUE
    assert queue_of({}, "deployments.autoscale", (), {})["queue"].name == "rollouts"
    [every] = [
        entry["schedule"]
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == "deployments.autoscale"
    ]
    assert 2 <= every <= 5
