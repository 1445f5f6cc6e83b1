"""Route changes: pub/sub, the periodic re-read, and blue-green flips under load."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter

import aiohttp
import httpx
import redis

from gateway.routes import ROUTES_KEY
from tests.gateway.support import DEFAULT_KEY, Deployments, Proc, auth, wait_until

BODY = {"instances": [[1.0, 2.0]]}


def served_version(client: httpx.Client, name: str) -> int | None:
    response = client.post(f"/d/{name}/predict", json=BODY, headers=auth())
    if response.status_code != 200:
        return None
    return int(response.headers["x-modelyard-version"])


def test_published_switch_reaches_the_next_requests_within_milliseconds(
    client: httpx.Client, deployments: Deployments, upstream_blue: Proc, upstream_green: Proc
) -> None:
    name = deployments.new_name("switch")
    deployments.publish(name, upstream_blue, version=1, slot="blue")
    wait_until(lambda: served_version(client, name) == 1, deadline_s=5, what="blue to serve")

    delays_ms: list[float] = []
    next_request_saw_it = 0
    switches = 20
    for index in range(switches):
        version, upstream, slot = (
            (2, upstream_green, "green")
            if index % 2 == 0
            else (
                1,
                upstream_blue,
                "blue",
            )
        )
        deployments.publish(name, upstream, version=version, slot=slot)
        published = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            seen = served_version(client, name)
            if seen == version:
                break
            assert time.perf_counter() - published < 2.0, f"switch {index} not visible in 2 s"
        delays_ms.append((time.perf_counter() - published) * 1e3)
        next_request_saw_it += attempts == 1

    print(
        f"\nroute switch visibility over {switches} switches: "
        f"{next_request_saw_it}/{switches} seen by the very next request; "
        f"publish-to-new-answer median {statistics.median(delays_ms):.2f} ms, "
        f"max {max(delays_ms):.2f} ms"
    )


def test_change_without_publish_is_picked_up_by_the_periodic_reread(
    client: httpx.Client,
    deployments: Deployments,
    redis_client: redis.Redis,
    upstream_blue: Proc,
    upstream_green: Proc,
) -> None:
    name = deployments.new_name("reread")
    # A bystander, so the hash never becomes empty: the gateway ignores an empty re-read.
    deployments.publish(deployments.new_name("bystander"), upstream_blue)
    deployments.publish(name, upstream_blue, version=1)
    wait_until(lambda: served_version(client, name) == 1, deadline_s=5, what="blue to serve")

    deployments.publish(name, upstream_green, version=2, slot="green", announce=False)
    written = time.perf_counter()
    wait_until(lambda: served_version(client, name) == 2, deadline_s=3, what="re-read")
    print(f"\nunannounced change visible after {(time.perf_counter() - written) * 1e3:.0f} ms")

    redis_client.hdel(ROUTES_KEY, name)  # removal without announcement
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 401,
        deadline_s=3,
        what="removed route to answer 401 (as unknown names do)",
    )


def test_request_in_flight_during_a_switch_finishes_on_the_old_slot(
    gateway: Proc, deployments: Deployments, upstream_blue: Proc, upstream_green: Proc
) -> None:
    name = deployments.new_name("inflight")
    deployments.publish(name, upstream_blue, version=1)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        wait_until(lambda: served_version(client, name) == 1, deadline_s=5, what="blue")
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            with httpx.Client(base_url=gateway.url, timeout=10) as own:
                result["slow"] = own.post(
                    f"/d/{name}/slow?ms=400&tag={name}", json=BODY, headers=auth()
                )

        thread = threading.Thread(target=slow_request)
        thread.start()
        # The switch comes once blue holds the request (a fixed head start lost the race on
        # a loaded machine: the request then reached green).
        wait_until(
            lambda: httpx.get(f"{upstream_blue.url}/inflight?tag={name}").json()["slow"] == 1,
            deadline_s=5,
            what="the slow request on blue",
        )
        deployments.publish(name, upstream_green, version=2, slot="green")
        wait_until(lambda: served_version(client, name) == 2, deadline_s=2, what="green")
        thread.join(timeout=5)

    slow = result["slow"]
    assert slow.status_code == 200
    assert slow.json()["version"] == 1
    assert slow.headers["x-modelyard-version"] == "1"


def test_twenty_flips_under_concurrent_load_fail_no_request(
    gateway: Proc, deployments: Deployments, upstream_blue: Proc, upstream_green: Proc
) -> None:
    name = deployments.new_name("flips")
    deployments.publish(name, upstream_blue, version=1)
    with httpx.Client(base_url=gateway.url) as client:
        wait_until(lambda: served_version(client, name) == 1, deadline_s=5, what="blue")

    flips = 20
    concurrency = 16
    outcomes: Counter[str] = Counter()
    mismatches: list[str] = []
    url = f"{gateway.url}/d/{name}/predict"

    async def load(session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with session.post(
                url, json=BODY, headers={"Authorization": f"Bearer {DEFAULT_KEY}"}
            ) as response:
                payload = await response.json(content_type=None)
                if response.status != 200:
                    outcomes[f"status {response.status}: {payload}"] += 1
                    continue
                header = int(response.headers["x-modelyard-version"])
                outcomes[f"v{header}"] += 1
                # The header names the version the request was routed to; the body says which
                # server computed it. They must agree even when the route flips mid-request.
                if payload["version"] != header:
                    mismatches.append(f"header v{header}, body v{payload['version']}")

    async def flipper(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.2)
        for index in range(flips):
            version, upstream, slot = (
                (2, upstream_green, "green") if index % 2 == 0 else (1, upstream_blue, "blue")
            )
            deployments.publish(name, upstream, version=version, slot=slot)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        stop.set()

    async def run() -> None:
        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.wait_for(
                asyncio.gather(flipper(stop), *(load(session, stop) for _ in range(concurrency))),
                timeout=30,
            )

    started = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - started

    total = sum(outcomes.values())
    failures = {outcome: n for outcome, n in outcomes.items() if not outcome.startswith("v")}
    print(
        f"\n{flips} flips under {concurrency} concurrent clients: {total} requests in "
        f"{elapsed:.1f} s ({total / elapsed:.0f} req/s), {dict(outcomes)}"
    )
    assert failures == {}
    assert mismatches == []
    assert outcomes["v1"] > 0
    assert outcomes["v2"] > 0
    with httpx.Client(base_url=gateway.url) as client:
        assert served_version(client, name) == 1  # an even number of flips ends on blue
