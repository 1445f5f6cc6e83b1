"""Shadow mirroring through a real gateway process: the comparison figures against an offline
comparison of the same rows, a dead, failing or slow shadow costing live nothing, a full queue.

Live and shadow are stand-in classifiers (``upstream_app.py --classify T``) with different
thresholds, so they disagree on exactly the rows whose sum lies between the two.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import redis

from gateway.shadow_reports import ShadowTotals, shadow_read
from tests.gateway.load import failures, load_start
from tests.gateway.support import Deployments, Proc, arm_of, auth, wait_until
from tests.gateway.test_gateway_arms import route_ready, send_all

SHADOW_VERSION = 9


@pytest.fixture(scope="module")
def live_classifier(start_upstream: Callable[..., Proc]) -> Proc:
    return start_upstream(1, "live-clf", extra_args=("--classify", "0"))


@pytest.fixture(scope="module")
def shadow_classifier(start_upstream: Callable[..., Proc]) -> Proc:
    return start_upstream(SHADOW_VERSION, "shadow-clf", extra_args=("--classify", "1"))


def totals(client: redis.Redis, name: str) -> ShadowTotals:
    now = time.time()
    return shadow_read(client, name, SHADOW_VERSION, now - 600, now + 60)


def bodies(count: int) -> list[dict[str, Any]]:
    """Requests of 1-3 rows whose sums spread over [-2, 3]: a good share between 0 and 1."""
    rng = np.random.default_rng(19)
    return [
        {"instances": rng.uniform(-1.0, 1.5, size=(int(rng.integers(1, 4)), 2)).round(4).tolist()}
        for _ in range(count)
    ]


def offline(live: Proc, shadow: Proc, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """What the two servers answer for the same rows, compared here with numpy."""
    labels: list[tuple[int, int]] = []
    diffs: list[np.ndarray] = []
    with httpx.Client(timeout=10) as http:
        for body in requests:
            a = http.post(f"{live.url}/predict", json=body).json()
            b = http.post(f"{shadow.url}/predict", json=body).json()
            labels += zip(a["predictions"], b["predictions"], strict=True)
            diffs.append(np.abs(np.array(a["probabilities"]) - np.array(b["probabilities"])))
    flat = np.concatenate([d.ravel() for d in diffs])
    return {
        "rows": len(labels),
        "agree": sum(x == y for x, y in labels),
        "prob_values": flat.size,
        "prob_abs_mean": float(flat.mean()),
        "prob_abs_max": float(flat.max()),
    }


def _mirrored_to(
    shadow: Proc, gateway: Proc, deployments: Deployments, live: Proc, prefix: str
) -> str:
    """A new deployment served by ``live`` with every request mirrored to ``shadow``, its
    route ready on ``gateway``; its name."""
    name = deployments.new_name(prefix)
    deployments.publish(name, live, shadow=arm_of(shadow, version=SHADOW_VERSION, weight=10_000))
    route_ready(gateway, name)
    return name


def _kill_under_load(gateway: Proc, name: str, tmp_path: Path, kill: Callable[[], object]) -> None:
    """100 requests/s for 4 s through ``name``, ``kill`` 1.5 s in: every live request answered."""
    load = load_start(
        f"{gateway.url}/d/{name}/predict",
        tmp_path / "load.jsonl",
        "--rate",
        "100",
        "--duration",
        "4",
    )
    time.sleep(1.5)
    kill()
    records = load.records()
    assert len(records) == 400
    assert failures(records) == []


def test_shadow_figures_equal_an_offline_comparison_and_live_answers_are_untouched(
    gateway: Proc,
    deployments: Deployments,
    redis_client: redis.Redis,
    live_classifier: Proc,
    shadow_classifier: Proc,
) -> None:
    figures_match_offline(gateway, deployments, redis_client, live_classifier, shadow_classifier)


def test_on_the_gateways_own_event_loop_too_the_figures_equal_an_offline_comparison(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    redis_client: redis.Redis,
    live_classifier: Proc,
    shadow_classifier: Proc,
) -> None:
    gateway = start_gateway(redis_url, env={"MODELYARD_GATEWAY_SHADOW_PROCESS": "0"})
    assert shadow_processes(gateway) == []
    figures_match_offline(gateway, deployments, redis_client, live_classifier, shadow_classifier)
    gateway.stop()


def shadow_processes(gateway: Proc) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(gateway.popen.pid).children(recursive=True)
        if "gateway.shadow_process" in child.cmdline()
    ]


def niced(gateway: Proc) -> int:
    """How many shadow processes the gateway runs, once each has lowered its priority."""
    found = shadow_processes(gateway)
    return len(found) if all(p.nice() == 19 for p in found) else -1


def figures_match_offline(
    gateway: Proc,
    deployments: Deployments,
    redis_client: redis.Redis,
    live_classifier: Proc,
    shadow_classifier: Proc,
) -> None:
    name = _mirrored_to(shadow_classifier, gateway, deployments, live_classifier, "shadow")
    time.sleep(0.5)  # route_ready's own request is mirrored too: let it land, then start afresh
    before = totals(redis_client, name)
    requests = bodies(300)
    url = f"{gateway.url}/d/{name}/predict"
    answers = []
    with httpx.Client(timeout=10) as http:
        for body in requests:
            response = http.post(url, json=body, headers=auth())
            assert response.status_code == 200
            assert response.headers["x-modelyard-arm"] == "live"
            answers.append(response.json())
    expected = offline(live_classifier, shadow_classifier, requests)
    # The live answer is live's own body (plus the spliced inference id), never the shadow's.
    with httpx.Client(timeout=10) as http:
        for body, answer in zip(requests[:20], answers[:20], strict=True):
            direct = http.post(f"{live_classifier.url}/predict", json=body).json()
            assert {k: v for k, v in answer.items() if k != "inference_id"} == direct
            assert answer["inference_id"]

    wait_until(
        lambda: totals(redis_client, name).compared - before.compared == 300,
        deadline_s=10,
        what="300 comparisons in Redis",
    )
    after = totals(redis_client, name)
    rows = after.rows - before.rows
    agree = after.agree - before.agree
    prob_values = after.prob_values - before.prob_values
    prob_sum = after.prob_abs_sum - before.prob_abs_sum
    print(
        f"\nshadow: {rows} rows, agreement {agree / rows:.4f} (offline "
        f"{expected['agree'] / expected['rows']:.4f}), mean |dp| {prob_sum / prob_values:.6f} "
        f"(offline {expected['prob_abs_mean']:.6f}), max |dp| {after.prob_abs_max:.6f} "
        f"(offline {expected['prob_abs_max']:.6f}), latency diff "
        f"{after.latency_diff_ms_mean:.3f} ms"
    )
    assert after.mirrored - before.mirrored == 300
    assert after.errors == 0 and after.dropped == 0
    assert rows == expected["rows"]
    assert agree == expected["agree"]
    assert 0 < agree < rows  # the fixture really does disagree on some rows
    assert prob_values == expected["prob_values"]
    assert prob_sum / prob_values == pytest.approx(expected["prob_abs_mean"], rel=1e-9)
    # route_ready's request is in the window's max too; its row sum (3) is far from both
    # thresholds, so it cannot hold the max of these rows.
    assert after.prob_abs_max == pytest.approx(expected["prob_abs_max"], rel=1e-12)
    assert after.latency_diff_ms_mean is not None
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert re.search(
        rf'modelyard_gateway_shadow_mirrored_total{{deployment="{name}"}} 30[01]\.0', metrics
    )


def test_shadow_weight_mirrors_its_share(
    gateway: Proc,
    deployments: Deployments,
    redis_client: redis.Redis,
    live_classifier: Proc,
    shadow_classifier: Proc,
) -> None:
    name = deployments.new_name("share")
    deployments.publish(
        name,
        live_classifier,
        shadow=arm_of(shadow_classifier, version=SHADOW_VERSION, weight=2500),
    )
    route_ready(gateway, name)
    results = send_all(
        f"{gateway.url}/d/{name}/predict", [({}, {"instances": [[0.5, 0.1]]})] * 2000
    )
    assert {status for status, *_ in results} == {200}
    wait_until(
        lambda: httpx.get(f"{gateway.url}/healthz").json()["shadow_pending"] == 0,
        deadline_s=5,
        what="the shadow queue to drain",
    )
    time.sleep(0.5)  # one more flush
    mirrored = totals(redis_client, name).mirrored
    print(f"\nshadow weight 2500 bp: {mirrored} of ~2001 mirrored")
    assert abs(mirrored / 2001 - 0.25) <= 0.03


def test_shadow_killed_under_load_fails_no_live_request_and_its_errors_are_counted(
    gateway: Proc,
    deployments: Deployments,
    redis_client: redis.Redis,
    start_upstream: Callable[..., Proc],
    live_classifier: Proc,
    tmp_path: Path,
) -> None:
    doomed = start_upstream(SHADOW_VERSION, "shadow-doomed", extra_args=("--classify", "1"))
    name = _mirrored_to(doomed, gateway, deployments, live_classifier, "shkill")
    _kill_under_load(gateway, name, tmp_path, doomed.popen.kill)
    wait_until(
        lambda: totals(redis_client, name).mirrored >= 401,
        deadline_s=10,
        what="every mirrored request to be accounted for",
    )
    after = totals(redis_client, name)
    print(
        f"\nshadow killed under load: 400 live requests, 0 failed; shadow mirrored "
        f"{after.mirrored}, compared {after.compared}, errors {after.errors} "
        f"(connect {after.errors_connect})"
    )
    assert after.compared > 0  # before the kill
    assert after.errors_connect > 150  # ~2.5 s of 100/s after it
    assert after.errors == after.errors_connect
    assert after.compared + after.errors == after.mirrored


def test_the_shadow_process_runs_at_idle_priority_and_killed_fails_no_live_request(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    redis_client: redis.Redis,
    live_classifier: Proc,
    shadow_classifier: Proc,
    tmp_path: Path,
) -> None:
    """The gateway's own shadow process (gateway.shadow_process) at nice 19 in SCHED_IDLE;
    SIGKILLed under load: no live request fails, another one starts and mirroring resumes."""
    shipped = {"MODELYARD_GATEWAY_SHADOW_NICE": "19", "MODELYARD_GATEWAY_SHADOW_SCHED_IDLE": "1"}
    gateway = start_gateway(redis_url, env=shipped)
    wait_until(lambda: niced(gateway) == 1, deadline_s=10, what="its shadow process")
    (first,) = shadow_processes(gateway)
    if hasattr(os, "SCHED_IDLE"):
        assert os.sched_getscheduler(first.pid) == os.SCHED_IDLE
    name = _mirrored_to(shadow_classifier, gateway, deployments, live_classifier, "shprockill")
    _kill_under_load(gateway, name, tmp_path, first.kill)
    wait_until(lambda: niced(gateway) == 1, deadline_s=10, what="another shadow process")
    (second,) = shadow_processes(gateway)
    assert second.pid != first.pid
    before = totals(redis_client, name).compared
    send_all(f"{gateway.url}/d/{name}/predict", [({}, {"instances": [[1, 1]]})] * 20)
    # Idle priority: on a machine the rest of the suite keeps busy it compares slowly.
    wait_until(
        lambda: totals(redis_client, name).compared >= before + 20,
        deadline_s=60,
        what="the new shadow process to compare again",
    )
    log = gateway.log()
    assert "the shadow process exited" in log
    print(f"\nshadow process killed under load: 400 live requests, 0 failed; pid {second.pid} next")
    gateway.stop()


def test_failing_and_slow_shadows_are_counted_as_status_and_timeout_errors(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    redis_client: redis.Redis,
    start_upstream: Callable[..., Proc],
    live_classifier: Proc,
) -> None:
    gateway = start_gateway(redis_url, env={"MODELYARD_GATEWAY_SHADOW_TIMEOUT_S": "0.2"})
    crashing = start_upstream(SHADOW_VERSION, "shadow-500", extra_args=("--fail-predict",))
    slow = start_upstream(SHADOW_VERSION, "shadow-slow", extra_args=("--delay-ms", "1000"))
    for upstream, field in ((crashing, "errors_status"), (slow, "errors_timeout")):
        name = _mirrored_to(upstream, gateway, deployments, live_classifier, "sherr")
        results = send_all(f"{gateway.url}/d/{name}/predict", [({}, {"instances": [[1, 1]]})] * 40)
        assert {status for status, *_ in results} == {200}
        wait_until(
            lambda name=name: totals(redis_client, name).mirrored >= 41,  # type: ignore[misc]
            deadline_s=10,
            what=f"{field} to be counted",
        )
        counted = totals(redis_client, name)
        assert counted.errors == getattr(counted, field) == counted.mirrored
        assert counted.compared == 0
    gateway.stop()


def test_full_shadow_queue_drops_and_counts_without_slowing_live(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    redis_client: redis.Redis,
    start_upstream: Callable[..., Proc],
    live_classifier: Proc,
) -> None:
    gateway = start_gateway(
        redis_url,
        env={"MODELYARD_GATEWAY_SHADOW_QUEUE_SIZE": "2", "MODELYARD_GATEWAY_SHADOW_WORKERS": "1"},
    )
    slow = start_upstream(SHADOW_VERSION, "shadow-slower", extra_args=("--delay-ms", "300"))
    name = _mirrored_to(slow, gateway, deployments, live_classifier, "shfull")
    url = f"{gateway.url}/d/{name}/predict"
    with httpx.Client(timeout=10) as http:
        statuses = [
            http.post(url, json={"instances": [[1, 1]]}, headers=auth()).status_code
            for _ in range(60)
        ]
    assert set(statuses) == {200}
    health = httpx.get(f"{gateway.url}/healthz").json()
    dropped = health["shadow_dropped_queue_full"]
    wait_until(
        lambda: totals(redis_client, name).mirrored + totals(redis_client, name).dropped == 61,
        deadline_s=10,
        what="every request to be mirrored or dropped",
    )
    counted = totals(redis_client, name)
    print(f"\nqueue of 2, 1 worker, shadow 300 ms: {counted.dropped} of 61 dropped")
    assert counted.dropped == dropped >= 45
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'modelyard_gateway_shadow_dropped_total{{deployment="{name}"}} {dropped}.0' in metrics
    gateway.stop()


@pytest.mark.parametrize("in_process", ["1", "0"], ids=["shadow-process", "event-loop"])
def test_jobs_queued_for_a_shadow_that_left_the_route_are_dropped_not_sent(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    redis_client: redis.Redis,
    start_upstream: Callable[..., Proc],
    live_classifier: Proc,
    in_process: str,
) -> None:
    """A shadow promoted to a canary (or aborted) leaves queued jobs behind: they are dropped
    and counted, not sent to what now answers users (a canary judged on its latency)."""
    gateway = start_gateway(
        redis_url,
        env={
            "MODELYARD_GATEWAY_SHADOW_PROCESS": in_process,
            "MODELYARD_GATEWAY_SHADOW_QUEUE_SIZE": "100",
            "MODELYARD_GATEWAY_SHADOW_WORKERS": "2",
        },
    )
    slow = start_upstream(SHADOW_VERSION, "shadow-left", extra_args=("--delay-ms", "300"))
    name = _mirrored_to(slow, gateway, deployments, live_classifier, "shleft")
    results = send_all(f"{gateway.url}/d/{name}/predict", [({}, {"instances": [[1, 1]]})] * 40)
    assert {status for status, *_ in results} == {200}
    # 41 mirrored jobs, 2 workers, 300 ms each: ~37 still queued when the shadow leaves.
    deployments.publish(name, live_classifier)
    reached = httpx.get(f"{slow.url}/received").json()["predict"]
    time.sleep(2.0)  # the queue would have sent ~13 more by now
    later = httpx.get(f"{slow.url}/received").json()["predict"]
    # Those dequeued before the gateway read the new route (pub/sub: milliseconds) may go.
    assert later - reached <= 2, (reached, later)
    wait_until(
        lambda: totals(redis_client, name).mirrored + totals(redis_client, name).dropped == 41,
        deadline_s=10,
        what="every job to be mirrored or dropped",
    )
    counted = totals(redis_client, name)
    assert counted.dropped >= 30 and counted.mirrored == later, (counted, later)
    gateway.stop()


def test_shadow_counts_reach_redis_as_one_hash_per_minute_with_a_ttl(
    gateway: Proc,
    deployments: Deployments,
    redis_client: redis.Redis,
    live_classifier: Proc,
    shadow_classifier: Proc,
) -> None:
    name = _mirrored_to(shadow_classifier, gateway, deployments, live_classifier, "shkeys")
    wait_until(
        lambda: bool(list(redis_client.scan_iter(f"modelyard:shadow:{name}:*"))),
        deadline_s=5,
        what="a shadow key",
    )
    key = next(iter(redis_client.scan_iter(f"modelyard:shadow:{name}:*")))
    assert re.fullmatch(rf"modelyard:shadow:{name}:{SHADOW_VERSION}:\d+", key.decode())
    assert 2 * 86_400 < redis_client.ttl(key) <= 3 * 86_400
    assert json.loads(json.dumps(totals(redis_client, name).as_dict()))["mirrored"] >= 1
