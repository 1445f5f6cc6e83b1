"""Roll-ups add what Redis holds to what PostgreSQL kept: Redis losing its buffers loses nothing
already rolled up, and nothing is counted twice, whatever runs twice.

Redis here is real: the monitoring suite's own redis-server (FLUSHALL is what a restart without
persistence leaves), or a throwaway one stopped, restarted and SIGSTOPped for the recovery test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import redis
import redis.asyncio as aioredis

from gateway.metric_buffers import metrics_buffer_read
from gateway.metrics import (
    BUCKET_COUNT,
    METRICS_DIRTY_KEY,
    MetricsRecorder,
    bucket_index,
    buffer_key,
)
from monitoring.models import MetricRollup
from monitoring.services import metrics_rollup
from tests.gateway.support import RedisServer
from tests.monitoring.conftest import flush, minute_ago


def _record(recorder, deployment, requests, *, now, latency_ms=2.0, status=200):
    for _ in range(requests):
        recorder.record(
            deployment=deployment,
            version=2,
            status=status,
            latency_s=latency_ms / 1e3,
            rows=3,
            now=now,
        )


def _row(**filters):
    return MetricRollup.objects.get(version=2, **filters)


def test_a_rollup_run_twice_counts_once(deployment, monitoring_redis, settings):
    recorder = MetricsRecorder()
    now = minute_ago(2)
    _record(recorder, deployment.name, 12, now=now)
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    monitoring_redis.zadd(
        METRICS_DIRTY_KEY, {buffer_key(int(now) // 60 * 60, deployment.name, 2, 200): 7}
    )
    metrics_rollup()  # the same buffer again, now with its base recorded
    row = _row()
    assert (row.count, row.rows, sum(row.histogram)) == (12, 36, 12)


def test_redis_flushed_between_two_rollups_keeps_the_first_counts_and_adds_the_new(
    deployment, monitoring_redis, settings
):
    recorder = MetricsRecorder()
    now = minute_ago(2)
    _record(recorder, deployment.name, 10, now=now, latency_ms=2.0)
    _record(recorder, deployment.name, 4, now=now, status=503, latency_ms=0.2)
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    assert _row(status=200).count == 10

    monitoring_redis.flushall()  # what a restart without persistence leaves: no buffers
    _record(recorder, deployment.name, 5, now=now, latency_ms=9.0)  # the same minute
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()
    metrics_rollup()

    row = _row(status=200)
    assert (row.count, row.rows, row.latency_us_sum) == (15, 45, 10 * 2000 + 5 * 9000)
    assert len(row.histogram) == BUCKET_COUNT
    assert row.histogram[bucket_index(2.0)] == 10 and row.histogram[bucket_index(9.0)] == 5
    assert (_row(status=503).count, _row(status=503).errors) == (4, 4)  # untouched, not zeroed


def test_a_buffer_from_before_flushes_marked_it_is_its_minutes_whole_total(
    deployment, monitoring_redis
):
    # Written by a gateway that predates from_empty: its hash holds the minute's complete
    # total (the old protocol), so the roll-up replaces the row with it rather than adding
    # it to the counts it already rolled up from that very hash.
    start = int(minute_ago(3)) // 60 * 60
    key = buffer_key(start, deployment.name, 2, 200)
    monitoring_redis.hset(key, mapping={"count": 6, "rows": 6, "latency_us_sum": 600, "b10": 6})
    monitoring_redis.zadd(METRICS_DIRTY_KEY, {key: 1})
    metrics_rollup()
    monitoring_redis.hincrby(key, "count", 2)
    monitoring_redis.zadd(METRICS_DIRTY_KEY, {key: 2})
    metrics_rollup()
    assert _row().count == 8


def _flush_with(
    loop: asyncio.AbstractEventLoop, recorder: MetricsRecorder, client: aioredis.Redis
) -> None:
    # As the gateway's flush loop does: a failed flush keeps its counts for the next one.
    with contextlib.suppress(redis.RedisError):
        loop.run_until_complete(recorder.flush(client))


def test_counts_after_a_stall_and_a_restart_equal_the_requests_sent(
    deployment, throwaway_redis: RedisServer, settings
):
    """Flush, roll up, stall Redis (answers lost), restart it empty, keep recording: equal."""
    now = minute_ago(2)
    recorder = MetricsRecorder()
    sent = 0
    loop = asyncio.new_event_loop()  # one loop and client throughout, as in the gateway
    client = aioredis.from_url(throwaway_redis.url, socket_timeout=0.3)
    try:

        def traffic(requests: int) -> None:
            nonlocal sent
            _record(recorder, deployment.name, requests, now=now)
            sent += requests

        traffic(30)
        _flush_with(loop, recorder, client)
        metrics_rollup()

        assert throwaway_redis.proc is not None
        os.kill(throwaway_redis.proc.pid, signal.SIGSTOP)
        traffic(20)
        _flush_with(loop, recorder, client)  # times out; Redis will run it when continued
        traffic(5)
        os.kill(throwaway_redis.proc.pid, signal.SIGCONT)
        loop.run_until_complete(asyncio.sleep(0.3))
        traffic(5)
        _flush_with(loop, recorder, client)  # replays the stalled batch (skipped), then the rest
        metrics_rollup()
        assert _row().count == sent == 60

        throwaway_redis.stop()  # no persistence: buffers, dirty set and flush ids all go
        traffic(25)
        _flush_with(loop, recorder, client)  # refused: kept
        throwaway_redis.start()
        traffic(15)
        _flush_with(loop, recorder, client)
        _flush_with(loop, recorder, client)
        metrics_rollup()
        metrics_rollup()
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    assert recorder.pending_requests == 0
    store = redis.Redis.from_url(throwaway_redis.url)
    buffer = metrics_buffer_read(store, buffer_key(int(now) // 60 * 60, deployment.name, 2, 200))
    assert buffer is not None and buffer.count == 40  # only what came after the restart
    store.close()
    row = _row()
    assert (row.count, row.rows, sum(row.histogram)) == (sent, 3 * sent, sent) == (100, 300, 100)
