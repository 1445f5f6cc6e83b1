"""The gateway keeps serving from memory while Redis is gone, and resyncs when it is back.

Uses a throwaway redis-server of its own (never the shared one): stopping and restarting it
loses its data, like a Redis without persistence would.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis

from gateway.metric_buffers import metrics_buffer_read
from gateway.routes import Route, deployment_key_hash, route_publish
from gateway.sampling import samples_key
from tests.gateway.support import DEFAULT_KEY, Proc, RedisServer, auth, wait_until

BODY = {"instances": [[1.0, 2.0]]}


def publish(client: redis.Redis, upstream: Proc, version: int, slot: str) -> None:
    route_publish(
        client,
        Route(
            deployment="outage",
            version=version,
            slot=slot,  # type: ignore[arg-type]
            upstream=upstream.url,
            key_hashes=(deployment_key_hash(DEFAULT_KEY),),
        ),
    )


def test_gateway_serves_through_a_redis_outage_and_resyncs_after_it(
    own_redis: RedisServer,
    start_gateway: Callable[..., Proc],
    upstream_blue: Proc,
    upstream_green: Proc,
) -> None:
    store = redis.Redis.from_url(own_redis.url)
    publish(store, upstream_blue, 1, "blue")
    gateway = start_gateway(own_redis.url)
    with httpx.Client(base_url=gateway.url, timeout=5) as client:

        def health() -> dict[str, object]:
            return client.get("/healthz").json()

        for _ in range(5):
            assert client.post("/d/outage/predict", json=BODY, headers=auth()).status_code == 200
        wait_until(
            lambda: health()["metrics_pending_requests"] == 0,
            deadline_s=5,
            what="the first requests' metrics to be flushed",
        )

        own_redis.stop()
        wait_until(
            lambda: health()["redis_ok"] is False,
            deadline_s=5,
            what="the gateway to notice that Redis is gone",
        )
        during = [client.post("/d/outage/predict", json=BODY, headers=auth()) for _ in range(20)]
        assert [r.status_code for r in during] == [200] * 20
        assert {r.headers["x-modelyard-version"] for r in during} == {"1"}
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "Redis does not answer" in not_ready.json()["error"]["message"]
        assert health()["metrics_pending_requests"] == 20
        # Sampled copies (rate 1 here) wait in memory too: failed flushes put them back.
        wait_until(
            lambda: health()["samples_pending"] == 20,
            deadline_s=2,
            what="the 20 samples to wait for Redis",
        )

        # Redis comes back empty (no persistence): the gateway keeps its table rather than
        # adopting the empty one, until the rollout side publishes routes again.
        own_redis.start()
        store = redis.Redis.from_url(own_redis.url)
        wait_until(lambda: health()["redis_ok"] is True, deadline_s=10, what="reconnect")
        kept = client.post("/d/outage/predict", json=BODY, headers=auth())
        assert kept.status_code == 200
        assert kept.headers["x-modelyard-version"] == "1"
        publish(store, upstream_green, 2, "green")

        v1_after_restart = 1  # the request above

        def serves_v2() -> bool:
            nonlocal v1_after_restart
            response = client.post("/d/outage/predict", json=BODY, headers=auth())
            assert response.status_code == 200
            v1_after_restart += response.headers["x-modelyard-version"] == "1"
            return response.headers["x-modelyard-version"] == "2"

        wait_until(serves_v2, deadline_s=10, what="the gateway to resync after the outage")
        wait_until(
            lambda: client.get("/readyz").status_code == 200,
            deadline_s=5,
            what="/readyz to recover",
        )

    # The 20 requests served during the outage were kept in memory and flushed afterwards
    # (with the v1 answers given while the gateway was still resyncing).
    def outage_requests_flushed() -> bool:
        keys = [k.decode() for k in store.scan_iter("modelyard:metrics:*:outage:1:200")]
        buffers = [metrics_buffer_read(store, key) for key in keys]
        return sum(b.count for b in buffers if b) == 20 + v1_after_restart

    wait_until(outage_requests_flushed, deadline_s=5, what="outage metrics to be flushed")

    # ... and so were their samples (the 5 from before the outage went with Redis's data).
    def outage_samples_written() -> bool:
        entries = store.xrange(samples_key("outage"))
        return sum(fields[b"version"] == b"1" for _, fields in entries) == 20 + v1_after_restart

    wait_until(outage_samples_written, deadline_s=5, what="outage samples to be written")
    gateway.stop()  # while its Redis still runs, so its final flush has somewhere to go
    store.close()
