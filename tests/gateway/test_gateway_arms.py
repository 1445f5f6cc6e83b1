"""Weighted canary and sticky A/B through a real gateway process and real upstream servers.

The live upstream answers ``X-Upstream-Slot: live-v1``, the canary ``canary-v8``: the split is
counted from what actually answered, and checked against ``X-Modelyard-Arm`` and
``X-Modelyard-Version``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis

from gateway.arms import sticky_bucket
from gateway.prediction_log import PREDICTIONS_STREAM
from gateway.routes import Sticky
from tests.gateway.load import failures, load_start
from tests.gateway.support import DEFAULT_KEY, Deployments, Proc, arm_of, auth, wait_until

BODY = {"instances": [[1.0, 2.0]]}


@pytest.fixture(scope="module")
def live_v1(start_upstream: Callable[..., Proc]) -> Proc:
    return start_upstream(1, "live-v1")


@pytest.fixture(scope="module")
def canary_v8(start_upstream: Callable[..., Proc]) -> Proc:
    return start_upstream(8, "canary-v8")


def route_ready(gateway: Proc, name: str, arm: str = "live") -> None:
    wait_until(
        lambda: (
            httpx.post(
                f"{gateway.url}/d/{name}/predict",
                json=BODY,
                headers={**auth(), "X-Modelyard-Arm": arm},
            ).status_code
            == 200
        ),
        deadline_s=5,
        what=f"route {name} to reach the gateway",
    )


async def _send_all(
    url: str, requests: list[tuple[dict[str, str], dict[str, Any]]], concurrency: int = 32
) -> list[tuple[int, str | None, str | None, str | None]]:
    """POST every (headers, body); (status, upstream slot, arm header, version header) each."""
    results: list[tuple[int, str | None, str | None, str | None]] = [(0, None, None, None)] * len(
        requests
    )
    queue = list(enumerate(requests))
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            index, (extra, body) = queue.pop()
            async with session.post(url, data=json.dumps(body), headers={**headers, **extra}) as r:
                await r.read()
                results[index] = (
                    r.status,
                    r.headers.get("x-upstream-slot"),
                    r.headers.get("x-modelyard-arm"),
                    r.headers.get("x-modelyard-version"),
                )

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def send_all(
    url: str, requests: list[tuple[dict[str, str], dict[str, Any]]]
) -> list[tuple[int, str | None, str | None, str | None]]:
    return asyncio.run(_send_all(url, requests))


@pytest.mark.parametrize("weight", [500, 2500, 5000])
def test_canary_weight_splits_10000_requests_within_2_points(
    weight: int,
    gateway: Proc,
    deployments: Deployments,
    live_v1: Proc,
    canary_v8: Proc,
    tmp_path: Path,
) -> None:
    name = deployments.new_name("split")
    deployments.publish(name, live_v1, canary=arm_of(canary_v8, version=8, weight=weight))
    route_ready(gateway, name, "canary")
    load = load_start(
        f"{gateway.url}/d/{name}/predict",
        tmp_path / "load.jsonl",
        "--concurrency",
        "16",
        "--requests",
        "10000",
    )
    records = load.records(timeout=180)
    served = Counter(record["replica"] for record in records)
    share = served["canary-v8"] / len(records)
    print(f"\nweight {weight} bp: canary answered {share:.2%} of {len(records)} ({dict(served)})")
    assert len(records) == 10_000
    assert failures(records) == []
    assert set(served) == {"live-v1", "canary-v8"}
    assert abs(share - weight / 10_000) <= 0.02


def test_every_answer_names_its_arm_and_version_and_metrics_land_per_version(
    gateway: Proc,
    deployments: Deployments,
    live_v1: Proc,
    canary_v8: Proc,
    redis_client: redis.Redis,
) -> None:
    name = deployments.new_name("ident")
    deployments.publish(name, live_v1, version=1, canary=arm_of(canary_v8, version=8, weight=5000))
    route_ready(gateway, name, "canary")
    results = send_all(f"{gateway.url}/d/{name}/predict", [({}, BODY)] * 400)
    assert {status for status, *_ in results} == {200}
    pairs = Counter((slot, arm, version) for _, slot, arm, version in results)
    assert set(pairs) == {("live-v1", "live", "1"), ("canary-v8", "canary", "8")}
    # A gateway's own refusal after the key is accepted carries the live arm's identity.
    refused = httpx.post(f"{gateway.url}/d/{name}/predict", content=b"not json", headers=auth())
    assert refused.status_code == 400
    assert refused.headers["x-modelyard-arm"] == "live"

    def by_version() -> dict[str, int]:
        text = httpx.get(f"{gateway.url}/metrics").text
        pattern = (
            rf'modelyard_gateway_requests_total{{deployment="{name}",status="200",'
            r'version="(\d+)"} ([\d.]+)'
        )
        return {version: int(float(value)) for version, value in re.findall(pattern, text)}

    # route_ready's one forced canary request counts too.
    expected = {
        "1": pairs[("live-v1", "live", "1")],
        "8": pairs[("canary-v8", "canary", "8")] + 1,
    }
    wait_until(lambda: by_version() == expected, deadline_s=5, what=f"metrics {expected}")

    def flushed(version: str) -> int:
        keys = redis_client.keys(f"modelyard:metrics:*:{name}:{version}:200")
        return sum(int(redis_client.hget(key, "count") or 0) for key in keys)

    # The Redis buffers the roll-up reads: the canary's requests under its own version.
    wait_until(
        lambda: {version: flushed(version) for version in expected} == expected,
        deadline_s=5,
        what=f"metric buffers {expected}",
    )


def test_prediction_log_records_the_arm_and_its_version(
    gateway: Proc,
    deployments: Deployments,
    live_v1: Proc,
    canary_v8: Proc,
    redis_client: redis.Redis,
) -> None:
    name = deployments.new_name("log")
    deployments.publish(name, live_v1, canary=arm_of(canary_v8, version=8, weight=5000))
    route_ready(gateway, name, "canary")
    started = int(time.time() * 1000) - 1
    ids = {}
    for arm in ("live", "canary", "canary"):
        response = httpx.post(
            f"{gateway.url}/d/{name}/predict",
            json=BODY,
            headers={**auth(), "X-Modelyard-Arm": arm},
        )
        assert response.status_code == 200
        ids[response.headers["x-modelyard-inference-id"]] = arm

    def logged() -> dict[str, tuple[str, str]]:
        # The route_ready request is logged too, maybe after ``started``: picked by id.
        entries = redis_client.xrange(PREDICTIONS_STREAM, min=f"{started}-0")
        return {
            fields[b"id"].decode(): (fields[b"arm"].decode(), fields[b"version"].decode())
            for _, fields in entries
            if fields[b"id"].decode() in ids
        }

    wait_until(lambda: len(logged()) == 3, deadline_s=5, what="3 logged predictions")
    assert logged() == {
        inference_id: (arm, "8" if arm == "canary" else "1") for inference_id, arm in ids.items()
    }


def test_override_header_forces_an_arm_and_an_unknown_arm_is_400(
    gateway: Proc, deployments: Deployments, live_v1: Proc, canary_v8: Proc
) -> None:
    name = deployments.new_name("force")
    # Weight 0: only the override reaches the canary; 10000 the other way round.
    deployments.publish(name, live_v1, canary=arm_of(canary_v8, version=8, weight=0))
    route_ready(gateway, name)
    url = f"{gateway.url}/d/{name}/predict"
    forced = send_all(url, [({"X-Modelyard-Arm": "canary"}, BODY)] * 50)
    assert {(status, slot, arm) for status, slot, arm, _ in forced} == {
        (200, "canary-v8", "canary")
    }
    plain = send_all(url, [({}, BODY)] * 50)
    assert {(status, slot) for status, slot, _, _ in plain} == {(200, "live-v1")}

    deployments.publish(name, live_v1, canary=arm_of(canary_v8, version=8, weight=10_000))
    wait_until(
        lambda: (
            httpx.post(url, json=BODY, headers=auth()).headers.get("x-modelyard-arm") == "canary"
        ),
        deadline_s=5,
        what="weight 10000 to reach the gateway",
    )
    forced = send_all(url, [({"X-Modelyard-Arm": "live"}, BODY)] * 50)
    assert {(status, slot, arm) for status, slot, arm, _ in forced} == {(200, "live-v1", "live")}

    bad = httpx.post(url, json=BODY, headers={**auth(), "X-Modelyard-Arm": "blue-ish"})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["code"] == "invalid_arm"
    assert "'blue-ish'" in error["message"]
    assert error["details"] == {"arm": "blue-ish", "arms": ["live", "canary"]}


def test_routes_without_arms_answer_live_and_refuse_a_canary_override(
    gateway: Proc, deployments: Deployments, live_v1: Proc
) -> None:
    name = deployments.new_name("plain")
    deployments.publish(name, live_v1, version=3)
    route_ready(gateway, name)
    url = f"{gateway.url}/d/{name}/predict"
    response = httpx.post(url, json=BODY, headers=auth())
    assert response.status_code == 200
    assert response.headers["x-modelyard-arm"] == "live"
    assert response.headers["x-modelyard-version"] == "3"
    assert response.json()["predictions"] == [3.0]
    assert (
        httpx.post(url, json=BODY, headers={**auth(), "X-Modelyard-Arm": "live"}).status_code == 200
    )
    refused = httpx.post(url, json=BODY, headers={**auth(), "X-Modelyard-Arm": "canary"})
    assert refused.status_code == 400
    assert refused.json()["error"]["details"] == {"arm": "canary", "arms": ["live"]}


def _expected_arm(name: str, key: str, weight: int) -> str:
    return "canary" if sticky_bucket(name, key.encode()) < weight else "live"


def test_sticky_header_keeps_each_of_1000_keys_in_one_arm_across_gateway_processes(
    gateway: Proc,
    start_gateway: Callable[..., Proc],
    redis_url: str,
    deployments: Deployments,
    live_v1: Proc,
    canary_v8: Proc,
) -> None:
    name = deployments.new_name("sticky")
    deployments.publish(
        name,
        live_v1,
        canary=arm_of(canary_v8, version=8, weight=2500),
        sticky=Sticky(header="x-user-id"),
    )
    route_ready(gateway, name, "canary")
    keys = [f"user-{index}" for index in range(1000)]
    requests = [({"X-User-Id": key}, BODY) for key in keys for _ in range(10)]
    results = send_all(f"{gateway.url}/d/{name}/predict", requests)
    arms: dict[str, set[str | None]] = {}
    for (headers, _), (status, slot, arm, _) in zip(requests, results, strict=True):
        assert status == 200
        assert (slot == "canary-v8") == (arm == "canary")
        arms.setdefault(headers["X-User-Id"], set()).add(arm)
    assert all(len(seen) == 1 for seen in arms.values())  # 100 % of keys kept their arm
    first = {key: next(iter(seen)) for key, seen in arms.items()}
    assert first == {key: _expected_arm(name, key, 2500) for key in keys}
    share = sum(arm == "canary" for arm in first.values()) / len(first)
    assert 0.20 <= share <= 0.30  # keys, not requests, are split at the weight

    # Without the key: a random draw (both arms seen for one and the same body).
    keyless = send_all(f"{gateway.url}/d/{name}/predict", [({}, BODY)] * 200)
    assert {arm for _, _, arm, _ in keyless} == {"live", "canary"}

    second = start_gateway(redis_url)  # another process: no shared state but the formula
    route_ready(second, name, "canary")
    again = send_all(f"{second.url}/d/{name}/predict", [({"X-User-Id": key}, BODY) for key in keys])
    assert {key: arm for key, (_, _, arm, _) in zip(keys, again, strict=True)} == first
    second.stop()


def test_sticky_body_field_assigns_by_the_field_value(
    gateway: Proc, deployments: Deployments, live_v1: Proc, canary_v8: Proc
) -> None:
    name = deployments.new_name("field")
    deployments.publish(
        name,
        live_v1,
        canary=arm_of(canary_v8, version=8, weight=5000),
        sticky=Sticky(field="user_id"),
    )
    route_ready(gateway, name, "canary")
    keys = [f"u{index}" for index in range(500)] + list(range(500))
    requests = [({}, {**BODY, "user_id": key}) for key in keys for _ in range(3)]
    results = send_all(f"{gateway.url}/d/{name}/predict", requests)
    seen: dict[str, set[str | None]] = {}
    for (_, body), (status, _, arm, _) in zip(requests, results, strict=True):
        assert status == 200
        seen.setdefault(json.dumps(body["user_id"]), set()).add(arm)
    assert all(len(arms) == 1 for arms in seen.values())
    for key in keys:
        key_bytes = key if isinstance(key, str) else json.dumps(key)
        assert seen[json.dumps(key)] == {_expected_arm(name, key_bytes, 5000)}
    # The header of another route's kind is no key here: header ignored, draw random.
    header_only = send_all(f"{gateway.url}/d/{name}/predict", [({"X-User-Id": "u1"}, BODY)] * 100)
    assert {arm for _, _, arm, _ in header_only} == {"live", "canary"}


def test_dead_canary_replica_retries_on_another_canary_replica_then_falls_back_to_live(
    start_gateway: Callable[..., Proc],
    own_redis: Any,
    start_upstream: Callable[..., Proc],
    live_v1: Proc,
    canary_v8: Proc,
) -> None:
    # A Redis of its own: the gateway sends repair requests to its broker (REDIS_URL).
    client = redis.Redis.from_url(own_redis.url)
    registry = Deployments(client)
    gateway = start_gateway(own_redis.url)
    dead = start_upstream(8, "canary-dead")
    dead.stop()
    name = registry.new_name("fallback")
    registry.publish(name, live_v1, canary=arm_of(dead, canary_v8, version=8, weight=10_000))
    route_ready(gateway, name, "canary")
    url = f"{gateway.url}/d/{name}/predict"
    results = send_all(url, [({}, BODY)] * 200)
    assert {(status, slot, arm) for status, slot, arm, _ in results} == {
        (200, "canary-v8", "canary")
    }
    assert httpx.get(f"{gateway.url}/healthz").json()["canary_fallbacks"] == 0

    registry.publish(name, live_v1, canary=arm_of(dead, version=8, weight=10_000))
    wait_until(
        lambda: (
            httpx.post(url, json=BODY, headers=auth()).headers.get("x-upstream-slot") == "live-v1"
        ),
        deadline_s=5,
        what="the canary without a live replica to fall back",
    )
    before = httpx.get(f"{gateway.url}/healthz").json()["canary_fallbacks"]
    results = send_all(url, [({}, BODY)] * 200)
    # Not one request lost: live answered each, and says so.
    assert {(status, slot, arm, version) for status, slot, arm, version in results} == {
        (200, "live-v1", "live", "1")
    }
    after = httpx.get(f"{gateway.url}/healthz").json()["canary_fallbacks"]
    assert after - before == 200
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert re.search(rf"modelyard_gateway_canary_fallbacks_total {after}\.0", metrics)
    gateway.stop()
    client.close()
