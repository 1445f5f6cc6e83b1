"""Canary rollouts on the real stack under load: the gateway splits by the route's canary arm,
the worker's judge advances the steps and promotes, or aborts a slow canary -- and the load
generator (its own process, counting every request) sees no failed request either way."""

from __future__ import annotations

import os
import time

import httpx
import psutil
import pytest

from deployments.models import Deployment
from gateway.routes import ROUTES_KEY, Route
from monitoring.tasks import metrics_rollup_task
from tests.deployments.flows import _roll_out, churn_deployment
from tests.deployments.loadgen import LoadProcess
from tests.models import train_sklearn_joblib

pytestmark = pytest.mark.stack_env(MODELYARD_CANARY_JUDGE_SECONDS="2")

# Short steps and a loose error tolerance so a pass needs ~100 canary requests, not ~500.
PLAN = {
    "steps": [10, 50],
    "min_step_seconds": 8,
    "min_step_requests": 50,
    "judge": {"min_requests": 50, "max_error_rate_increase": 0.05},
}


def _route(live_stack) -> Route:
    import redis

    client = redis.Redis.from_url(live_stack.env["REDIS_URL"])
    try:
        return Route.from_json(client.hget(ROUTES_KEY, "churn-prod"))
    finally:
        client.close()


def _follow(http, flow, rollout_id, until, timeout=240):
    """Poll the rollout (rolling the gateway's metrics up as beat would) until ``until``."""
    url = f"{flow.base}/deployments/churn-prod/rollouts/{rollout_id}/"
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        metrics_rollup_task.apply_async()
        body = http.get(url, headers=flow.ops).json()
        mark = (body["state"], body["canary_step"])
        if not seen or seen[-1] != mark:
            seen.append(mark)
        if until(body):
            return body, seen
        assert time.monotonic() < deadline, (body, seen)
        time.sleep(1)


def _load(live_stack, flow, tmp_path) -> LoadProcess:
    """Steady predictions through the gateway, every one counted, until ``stop()``."""
    return LoadProcess(
        f"{live_stack.gateway}/d/churn-prod/predict", flow.key, flow.rows, tmp_path / "l.json"
    )


def _rollout_start(http, flow, **body) -> int:
    started = http.post(
        f"{flow.base}/deployments/churn-prod/rollouts/", headers=flow.ops, json=body
    )
    assert started.status_code == 202, started.text
    return started.json()["id"]


def test_a_canary_ramps_through_its_steps_and_is_promoted_with_no_failed_request(
    live_stack, tmp_path
):
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, versions=2, bake_seconds=5)
        _roll_out(http, flow.base, flow.ops, 1, live_stack)
        load = _load(live_stack, flow, tmp_path)
        try:
            rollout_id = _rollout_start(http, flow, version=2, strategy="canary", plan=PLAN)
            body, _ = _follow(http, flow, rollout_id, lambda b: b["state"] == "canary")
            route = _route(live_stack)
            assert route.canary is not None and route.canary.weight == 1_000
            assert route.canary.version == 2 and route.version == 1
            body, seen = _follow(
                http, flow, rollout_id, lambda b: b["state"] in ("baking", "live", "aborted")
            )
        finally:
            result = load.stop()

    print(f"\ncanary ramp: {seen}; load {result}")
    assert body["state"] in ("baking", "live"), body
    assert ("canary", 0) in seen and ("canary", 1) in seen
    assert result["errors"] == {} and set(result["by_status"]) == {"200"}, result
    assert set(result["by_version"]) == {"1", "2"}, result
    judged = [step for step in body["steps"] if "judgement" in step]
    assert judged and judged[0]["judgement"]["verdict"] == "pass"
    route = _route(live_stack)
    assert (route.version, route.canary) == (2, None)
    assert Deployment.objects.get(name="churn-prod").live_slot == body["target_slot"]


def test_the_judge_aborts_a_slow_canary_and_no_request_fails(live_stack, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    slow = train_sklearn_joblib(seed=3, estimator=RandomForestClassifier(n_estimators=400))
    with httpx.Client(timeout=60) as http:
        # v3: the stack's BentoML store is the session's, where churn:v2 is the usual tree.
        flow = churn_deployment(http, live_stack, versions=2, more=(slow,))
        _roll_out(http, flow.base, flow.ops, 1, live_stack)
        load = _load(live_stack, flow, tmp_path)
        try:
            rollout_id = _rollout_start(
                http, flow, version=3, strategy="canary", plan={**PLAN, "steps": [30, 60]}
            )
            body, seen = _follow(
                http,
                flow,
                rollout_id,
                lambda b: b["state"] in ("aborted", "baking", "live", "failed"),
            )
        finally:
            result = load.stop()

    print(f"\nslow canary: {seen}; load {result}; judgement {body['judgement']}")
    assert body["state"] == "aborted", body
    latency = next(m for m in body["judgement"]["metrics"] if m["metric"] == "latency")
    assert latency["verdict"] == "fail" and latency["p_value"] < 0.01
    assert latency["canary"] > 1.25 * latency["baseline"]
    assert result["errors"] == {} and set(result["by_status"]) == {"200"}, result
    assert "3" in result["by_version"]  # the canary did answer before it was aborted
    route = _route(live_stack)
    assert (route.version, route.canary) == (1, None)


def _slot_tree(target_slot: str) -> list[psutil.Process]:
    """The processes of churn-prod's ``target_slot`` servers (noting parent, arbiter, workers)."""
    from deployments import backends
    from deployments.models import Slot

    key = Slot.objects.get(deployment__name="churn-prod", color=target_slot).runtime_key
    status = backends.runtime_backend().slot_status(slot_key=key)
    tree = []
    for replica in status.replicas:
        parent = psutil.Process(replica.pid)
        tree += [parent, *parent.children(recursive=True)]
    return tree


def test_a_shadow_runs_low_compares_real_answers_and_its_canary_runs_at_normal_priority(
    live_stack, tmp_path
):
    """On real BentoML servers: a shadow's slot serves at nice 19 and SCHED_IDLE, the gateway
    compares its answers with live's, and promoted to a canary it answers at normal priority
    and passes the judge's first step, with no failed request from start to finish."""
    with httpx.Client(timeout=60) as http:
        flow = churn_deployment(http, live_stack, versions=2, bake_seconds=5)
        _roll_out(http, flow.base, flow.ops, 1, live_stack)
        load = _load(live_stack, flow, tmp_path)
        try:
            rollout_id = _rollout_start(
                http, flow, version=2, strategy="shadow", plan={**PLAN, "mirror_percent": 100}
            )
            body, _ = _follow(
                http, flow, rollout_id, lambda b: b["state"] in ("shadow", "failed", "aborted")
            )
            assert body["state"] == "shadow", body
            tree = _slot_tree(body["target_slot"])
            assert tree and {(p.nice(), os.sched_getscheduler(p.pid)) for p in tree} == {
                (19, os.SCHED_IDLE)
            }
            body, _ = _follow(
                http,
                flow,
                rollout_id,
                lambda b: (b["judgement"] or {}).get("shadow", {}).get("compared", 0) >= 5,
                timeout=120,
            )
            compared = body["judgement"]["shadow"]
            moved = http.post(
                f"{flow.base}/deployments/churn-prod/rollouts/{rollout_id}/canary/",
                headers=flow.ops,
                json={"reason": "agrees"},
            )
            assert moved.status_code == 200, moved.text
            assert moved.json()["state"] == "canary"
            tree = _slot_tree(body["target_slot"])
            assert {(p.nice(), os.sched_getscheduler(p.pid)) for p in tree} == {(0, os.SCHED_OTHER)}
            # A healthy canary passes its first step. The shadow's queued mirrors are dropped
            # when it leaves the route: sent to the canary (16 at once, under load), they made
            # its median 25 % slower than the baseline's, and the judge aborted it at step 0.
            body, seen = _follow(
                http, flow, rollout_id, lambda b: b["state"] != "canary" or b["canary_step"] >= 1
            )
            assert (body["state"], body["canary_step"]) == ("canary", 1), (seen, body["judgement"])
        finally:
            result = load.stop()

    print(f"\nshadow on real servers: {compared}; load {result}")
    # Two different models compared on real answers: rows agreed or not, probabilities apart.
    assert compared["errors"] == 0 and compared["rows"] >= compared["compared"] >= 5, compared
    assert 0 <= compared["agree"] <= compared["rows"] and compared["prob_values"] > 0, compared
    assert result["errors"] == {} and set(result["by_status"]) == {"200"}, result
    assert set(result["by_version"]) == {"1", "2"}, result  # the canary answered too
