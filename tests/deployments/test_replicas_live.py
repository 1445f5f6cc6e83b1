"""Replicas on the real stack: `bentoml serve` servers, a Celery worker, the gateway, load.

The autoscaler's input is the gateway's in-flight report (gateway.replica_reports); the test
writes it through the contract's own writer, as a gateway does, because the gateway side of
the reports is being built beside this work. Everything else is the real path: the worker
runs the autoscale and repair tasks, starts and stops `bentoml serve` replicas, and the
gateway forwards a separate process's load through the route the platform publishes.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import psutil
import pytest
import redis.asyncio

from config.celery_app import app as celery_app
from deployments import backends
from deployments.models import Deployment, DeploymentEvent
from deployments.tasks import deployments_autoscale_task
from gateway.replica_reports import REPAIR_QUEUE, REPAIR_TASK, inflight_report_async
from tests.deployments.conftest import published
from tests.deployments.flows import _roll_out, churn_deployment
from tests.deployments.loadgen import LoadProcess

pytestmark = pytest.mark.stack


def report_inflight(redis_url: str, loads: dict[str, float]) -> None:
    async def send() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await inflight_report_async(
                client, "churn-prod", "gw-test", {u: (v, int(v)) for u, v in loads.items()}
            )
        finally:
            await client.aclose()

    asyncio.run(send())


def until(predicate, timeout: float, what: str, tick=None):
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick()
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)


def test_autoscale_1_2_1_under_load_fails_no_request(live_stack, tmp_path):
    redis_url = live_stack.env["REDIS_URL"]
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, versions=1)
        _roll_out(http, flow.base, flow.ops, 1, live_stack)
        changed = http.patch(
            f"{flow.base}/deployments/churn-prod/serving/",
            headers=flow.ops,
            json={
                "serving": {
                    "replicas_max": 2,
                    "scale_target_inflight": 2.0,
                    "scale_up_seconds": 1,
                    "scale_down_seconds": 2,
                }
            },
        )
        assert changed.status_code == 200, changed.text
    deployment = Deployment.objects.get(name="churn-prod")
    [first] = published(deployment).upstreams

    # One client: the real gateway reports its in-flight requests too (summed with the test's),
    # and one request at a time stays under the target whatever the machine's speed, so the
    # test's reports decide (four clients on a loaded machine kept 2 replicas desired).
    load = LoadProcess(
        f"{live_stack.gateway}/d/churn-prod/predict",
        flow.key,
        flow.rows,
        tmp_path / "load.json",
        clients=1,
    )
    try:
        time.sleep(2)

        def busy() -> None:  # 6 in flight for a target of 2 per replica: desired 2 (the max)
            report_inflight(redis_url, {first: 6.0})
            deployments_autoscale_task.apply_async()

        upstreams = until(
            lambda: len(published(deployment).upstreams) == 2 and published(deployment).upstreams,
            180,
            "the scale-up to 2 replicas",
            tick=busy,
        )
        assert upstreams[0] == first
        for url in upstreams:  # the new replica answers through its own port
            assert httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200
        time.sleep(3)

        def calm() -> None:
            report_inflight(redis_url, dict.fromkeys(upstreams, 0.0))
            deployments_autoscale_task.apply_async()

        until(
            lambda: published(deployment).upstreams == (first,),
            120,
            "the scale-down to 1 replica",
            tick=calm,
        )
        until(lambda: not _answers(upstreams[1]), 60, "the stopped replica's port to close")
        time.sleep(2)
    finally:
        result = load.stop()

    print(f"\nload through scale 1->2->1: {result}")
    assert result["total"] > 100, result
    assert result["errors"] == {} and set(result["by_status"]) == {"200"}, result
    scaled = list(
        DeploymentEvent.objects.filter(deployment=deployment, kind="autoscaled")
        .order_by("id")
        .values_list("message", flat=True)
    )
    assert len(scaled) == 2, scaled
    assert "1 -> 2 replicas" in scaled[0], scaled
    # The test's 6 and whatever the real gateway had in flight then.
    reported = re.search(r"([0-9.]+) requests in flight", scaled[0])
    assert reported and float(reported.group(1)) >= 6.0, scaled
    assert "2 -> 1 replicas" in scaled[1]


def test_killed_replica_is_repaired_by_the_task_once_naming_the_signal(live_stack):
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, versions=1)
        created = http.patch(
            f"{flow.base}/deployments/churn-prod/serving/",
            headers=flow.ops,
            json={"serving": {"replicas_min": 2, "replicas_max": 2}},
        )
        assert created.status_code == 200, created.text
        _roll_out(http, flow.base, flow.ops, 1, live_stack)
    deployment = Deployment.objects.get(name="churn-prod")
    upstreams = published(deployment).upstreams
    assert len(upstreams) == 2
    status = backends.runtime_backend().slot_status(slot_key="churn-prod.blue")
    noting_parent = psutil.Process(status.replicas[1].pid)
    arbiter = noting_parent.children()[0]
    arbiter.kill()
    psutil.wait_procs([noting_parent], timeout=15)

    for reason in ("refused", "reset", "refused"):  # a burst, as several gateway requests fail
        celery_app.send_task(
            REPAIR_TASK,
            kwargs={"deployment": "churn-prod", "upstream": upstreams[1], "reason": reason},
            queue=REPAIR_QUEUE,
        )
    until(
        lambda: DeploymentEvent.objects.filter(kind="replica_repaired").exists(),
        120,
        "the repair event",
    )
    until(lambda: published(deployment).upstreams == upstreams, 60, "the route with both")
    time.sleep(5)  # the rest of the burst has run by now
    events = list(DeploymentEvent.objects.filter(kind__startswith="replica_"))
    assert len(events) == 1, [(e.kind, e.message) for e in events]
    assert "killed by signal 9 (SIGKILL)" in events[0].message, events[0].message
    assert upstreams[1] in events[0].message
    assert _answers(upstreams[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
