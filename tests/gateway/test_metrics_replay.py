"""A metric flush is applied once: a replay after a lost answer (Redis stalled) counts nothing.

The stall is real: a redis-server of our own, SIGSTOPped. The flush's script call reaches its
socket, the client times out, and Redis runs the call when it is continued -- the answer the
gateway never saw. The gateway then sends the batch again, as it must (it cannot know).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import redis.asyncio as aioredis

from gateway.metric_buffers import metrics_buffer_read, metrics_dirty_keys
from gateway.metrics import FLUSH_ID_KEY_PREFIX, MetricsRecorder, buffer_key
from tests.gateway.support import RedisServer

MINUTE = 1_800_000_000


def _flush(recorder: MetricsRecorder, url: str, *, timeout_s: float = 5.0) -> int:
    async def run() -> int:
        client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return await recorder.flush(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


@contextmanager
def stalled(server: RedisServer) -> Iterator[None]:
    """Redis frozen (SIGSTOP) for the block, continued after it whatever happens."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def _record(recorder: MetricsRecorder, deployment: str, requests: int) -> None:
    for i in range(requests):
        recorder.record(
            deployment=deployment,
            version=1,
            status=200,
            latency_s=0.001 * (1 + i % 7),
            rows=2,
            now=MINUTE + i % 60,
        )


def test_a_flush_replayed_after_a_stall_counts_once(own_redis: RedisServer) -> None:
    store = redis.Redis.from_url(own_redis.url)
    deployment = f"replay-{uuid.uuid4().hex[:8]}"
    key = buffer_key(MINUTE, deployment, 1, 200)
    recorder = MetricsRecorder()

    async def scenario() -> int:
        # One client for the whole run, as the gateway has: its connection is up and its
        # script loaded before the stall, so the stalled EVALSHA is what reaches Redis (a new
        # connection would time out in its handshake and send nothing).
        client = aioredis.from_url(own_redis.url, socket_timeout=0.3)
        try:
            recorder.record(deployment="warm-up", version=1, status=200, latency_s=0.001, rows=1)
            assert await recorder.flush(client) == 1
            _record(recorder, deployment, 40)
            with stalled(own_redis), pytest.raises(redis.TimeoutError):
                await recorder.flush(client)
            # Redis, continued, runs the call the client gave up on.
            for _ in range(250):
                if (buffer := metrics_buffer_read(store, key)) is not None and buffer.count == 40:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the stalled flush was not applied after SIGCONT")
            assert recorder.pending_requests == 40  # the gateway cannot know it was applied
            _record(recorder, deployment, 7)  # traffic meanwhile waits behind that batch
            return await recorder.flush(client)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == 47
    buffer = metrics_buffer_read(store, key)
    assert buffer is not None
    assert (buffer.count, buffer.rows) == (47, 94)  # 40 once, not 80 + 7
    assert sum(buffer.histogram) == 47
    assert recorder.pending_requests == 0
    assert recorder.flushed_requests == 1 + 47
    # Three batches applied (the replay skipped): three ids recorded, each expiring.
    ids = list(store.scan_iter(f"{FLUSH_ID_KEY_PREFIX}*"))
    assert len(ids) == 3 and all(store.ttl(i) > 0 for i in ids)
    # The replay did not bump the dirty score either: 2 applied flushes touched the key.
    assert dict(metrics_dirty_keys(store))[key] == 2
    store.close()


def test_a_flush_refused_outright_is_applied_by_the_next_one(own_redis: RedisServer) -> None:
    store = redis.Redis.from_url(own_redis.url)
    deployment = f"refused-{uuid.uuid4().hex[:8]}"
    recorder = MetricsRecorder()
    _record(recorder, deployment, 5)
    own_redis.stop()
    with pytest.raises(redis.ConnectionError):
        _flush(recorder, own_redis.url, timeout_s=0.3)
    own_redis.start()  # empty again: nothing of the failed batch was applied
    _record(recorder, deployment, 3)
    assert _flush(recorder, own_redis.url) == 8
    buffer = metrics_buffer_read(store, buffer_key(MINUTE, deployment, 1, 200))
    assert buffer is not None and buffer.count == 8
    store.close()


def test_unacknowledged_batches_count_towards_the_memory_bound(own_redis: RedisServer) -> None:
    recorder = MetricsRecorder(max_pending_cells=3)
    for version in range(5):  # 5 cells, one a version, in one failed batch
        recorder.record(
            deployment="bound", version=version, status=200, latency_s=0.001, rows=1, now=MINUTE
        )
    with stalled(own_redis), pytest.raises(redis.TimeoutError):
        _flush(recorder, own_redis.url, timeout_s=0.3)
    assert recorder.dropped_cells == 2
    assert recorder.pending_requests == 3
    # In the totals /metrics serves too, until flushed.
    assert sum(cell.count for cell in recorder.totals().values()) == 3
