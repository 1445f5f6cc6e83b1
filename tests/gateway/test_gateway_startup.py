"""After a (re)start the gateway answers valid keys from its first request: 503 + Retry-After
until its route table is loaded, never the 401 of an unknown deployment.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from tests.gateway.load import load_start
from tests.gateway.support import Deployments, Proc, RedisServer, auth, free_port, wait_http

BODY = {"instances": [[1.0, 2.0]]}


def test_restarted_gateway_never_answers_a_valid_key_401(
    own_redis: RedisServer,
    start_gateway: Callable[..., Proc],
    upstream_blue: Proc,
    tmp_path: Path,
) -> None:
    # A redis-server of its own: nothing else can remove the route meanwhile (a real 401).
    redis_url = own_redis.url
    store = redis.Redis.from_url(redis_url)
    name = Deployments(store).new_name("restart")
    Deployments(store).publish(name, upstream_blue)
    port = free_port()
    gateway = start_gateway(redis_url, port=port)
    load = load_start(
        f"{gateway.url}/d/{name}/predict",
        tmp_path / "load.jsonl",
        *("--rate", "200", "--duration", "16", "--timeout", "5"),
    )
    kills = [signal.SIGKILL, signal.SIGTERM] * 3
    serving_since = []  # when each new process answered /healthz
    # Process starts take 1-3 s on the shared machine: stop restarting well before the load ends.
    while kills and time.time() < load.started_at + 11:
        time.sleep(0.6)
        gateway.popen.send_signal(kills.pop())
        gateway.popen.wait(timeout=30)
        gateway = start_gateway(redis_url, port=port, ready=None)
        wait_http(gateway, "/healthz")
        serving_since.append(time.time())
    records = load.records()

    statuses = Counter(r["status"] or r["error"] for r in records)
    print(
        f"\n{len(records)} requests at 200/s through {len(serving_since)} gateway restarts: "
        f"{statuses}"
    )
    assert len(serving_since) >= 3
    assert statuses[401] == 0
    assert set(statuses) - {200, 503} <= {
        "ClientConnectorError",  # the moments no process listened
        "ServerDisconnectedError",  # kept-alive connections of a killed process
        "ClientPayloadError",  # an answer the SIGKILL cut in the middle
        "ClientOSError",
    }
    assert all(r["code"] == "routes_not_loaded" for r in records if r["status"] == 503)
    # Every restarted process served valid keys.
    for since, until in zip(serving_since, [*serving_since[1:], float("inf")], strict=True):
        assert any(r["status"] == 200 and since <= r["sent"] < until for r in records)


def test_gateway_started_while_redis_is_down_answers_503_until_it_is_up(
    own_redis: RedisServer,
    start_gateway: Callable[..., Proc],
    upstream_blue: Proc,
) -> None:
    store = redis.Redis.from_url(own_redis.url)
    deployments = Deployments(store)
    name = deployments.new_name("cold")
    deployments.publish(name, upstream_blue)
    store.save()  # the route survives the stop below in dump.rdb, as with persistence
    store.close()
    own_redis.stop()

    gateway = start_gateway(
        own_redis.url, env={"MODELYARD_GATEWAY_STARTUP_ROUTE_WAIT_S": "0.5"}, ready=False
    )
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        during = [client.post(f"/d/{name}/predict", json=BODY, headers=auth()) for _ in range(5)]
        assert {r.status_code for r in during} == {503}
        assert {r.headers["retry-after"] for r in during} == {"7"}
        assert {r.json()["error"]["code"] for r in during} == {"routes_not_loaded"}
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "route table has not been loaded" in not_ready.json()["error"]["message"]

        own_redis.start()
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen.append(client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code)
            if seen[-1] == 200:
                break
            time.sleep(0.02)
        assert seen[-1] == 200, Counter(seen)
        assert set(seen) <= {503, 200}
        assert client.get("/readyz").status_code == 200
