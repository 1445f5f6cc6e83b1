"""Latency buckets, percentiles and the metric buffers in Redis (gateway.metrics)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from gateway.metric_buffers import (
    metrics_buffer_read,
    metrics_dirty_keys,
    metrics_mark_clean,
    parse_buffer_key,
)
from gateway.metrics import (
    BUCKET_BOUNDS_MS,
    BUCKET_COUNT,
    METRICS_DIRTY_KEY,
    MetricsRecorder,
    bucket_index,
    buffer_key,
    merge_histograms,
    percentile_from_histogram,
)
from tests.gateway.support import free_port


def histogram_of(latencies_ms: list[float]) -> list[int]:
    counts = [0] * BUCKET_COUNT
    for latency in latencies_ms:
        counts[bucket_index(latency)] += 1
    return counts


def test_bucket_bounds_span_50_us_to_60_s_in_about_10_percent_steps() -> None:
    assert BUCKET_BOUNDS_MS[0] == 0.05
    assert BUCKET_BOUNDS_MS[-1] == 60_000.0
    ratios = [b / a for a, b in itertools.pairwise(BUCKET_BOUNDS_MS)]
    assert all(1.08 < ratio < 1.12 for ratio in ratios)
    assert len(BUCKET_BOUNDS_MS) + 1 == BUCKET_COUNT


@pytest.mark.parametrize(
    ("latency_ms", "index"),
    [(0.0, 0), (0.05, 0), (0.0501, 1), (0.055, 1), (60_000.0, 147), (60_000.1, 148)],
)
def test_bucket_upper_bounds_are_inclusive(latency_ms: float, index: int) -> None:
    assert bucket_index(latency_ms) == index


def test_percentiles_are_within_one_bucket_of_the_exact_value() -> None:
    rng = random.Random(7)
    latencies = sorted(rng.lognormvariate(math.log(2.0), 0.8) for _ in range(20_000))
    counts = histogram_of(latencies)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = latencies[math.ceil(q * len(latencies)) - 1]
        estimate = percentile_from_histogram(counts, q)
        assert estimate is not None
        assert abs(estimate - exact) / exact < 0.10, (q, exact, estimate)


def test_percentile_of_one_bucket_stays_inside_it_and_grows_with_q() -> None:
    counts = [0] * BUCKET_COUNT
    counts[40] = 10
    values = [percentile_from_histogram(counts, q) for q in (0.0, 0.1, 0.5, 0.9, 1.0)]
    assert all(BUCKET_BOUNDS_MS[39] <= v <= BUCKET_BOUNDS_MS[40] for v in values)  # type: ignore[operator]
    assert values == sorted(values)  # type: ignore[type-var]
    assert values[-1] == pytest.approx(BUCKET_BOUNDS_MS[40])


def test_percentile_edge_cases() -> None:
    assert percentile_from_histogram([0] * BUCKET_COUNT, 0.5) is None
    overflow = [0] * BUCKET_COUNT
    overflow[-1] = 3
    assert percentile_from_histogram(overflow, 0.99) == 60_000.0
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        percentile_from_histogram(overflow, 99)
    with pytest.raises(ValueError, match="149 buckets"):
        percentile_from_histogram([1, 2, 3], 0.5)


def test_histograms_merge_by_adding_counts() -> None:
    a = histogram_of([0.1, 0.2, 5.0])
    b = histogram_of([0.2, 7000.0])
    merged = merge_histograms([a, b])
    assert merged == histogram_of([0.1, 0.2, 5.0, 0.2, 7000.0])


def test_parse_buffer_key_round_trips_and_names_bad_keys() -> None:
    assert parse_buffer_key(buffer_key(1_700_000_040, "churn-prod", 3, 200)) == (
        1_700_000_040,
        "churn-prod",
        3,
        200,
    )
    with pytest.raises(ValueError, match="not a metrics buffer key"):
        parse_buffer_key("other:key")


@pytest.fixture
def deployment(redis_client: redis.Redis) -> Iterator[str]:
    name = f"unit-{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(redis_client.scan_iter(f"modelyard:metrics:*:{name}:*"))
    if keys:
        redis_client.zrem(METRICS_DIRTY_KEY, *keys)
        redis_client.delete(*keys)


def test_flush_adds_to_minute_buffers_and_marks_them_dirty(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    recorder = MetricsRecorder()
    minute = 1_800_000_000  # a whole minute
    for latency_ms in (0.3, 0.3, 2.0):
        recorder.record(
            deployment=deployment,
            version=4,
            status=200,
            latency_s=latency_ms / 1e3,
            rows=5,
            now=minute + 10,
        )
    recorder.record(
        deployment=deployment, version=4, status=502, latency_s=0.001, rows=1, now=minute + 59
    )

    async def flush() -> int:
        client = aioredis.from_url(redis_url)
        try:
            return await recorder.flush(client)
        finally:
            await client.aclose()

    assert asyncio.run(flush()) == 4
    ok_key = buffer_key(minute, deployment, 4, 200)
    ok = metrics_buffer_read(redis_client, ok_key)
    assert ok is not None
    assert (ok.count, ok.rows, ok.errors, ok.latency_us_sum) == (3, 15, 0, 2600)
    assert ok.histogram[bucket_index(0.3)] == 2
    assert ok.histogram[bucket_index(2.0)] == 1
    failed = metrics_buffer_read(redis_client, buffer_key(minute, deployment, 4, 502))
    assert failed is not None
    assert (failed.count, failed.errors) == (1, 1)

    dirty = dict(metrics_dirty_keys(redis_client))
    assert dirty[ok_key] == 1
    assert redis_client.ttl(ok_key) > 0

    # A second flush adds to the same minute and bumps the score, so a roll-up that read the
    # first score cannot mark the key clean and lose the second flush.
    recorder.record(
        deployment=deployment, version=4, status=200, latency_s=0.0003, rows=5, now=minute + 30
    )
    asyncio.run(flush())
    again = metrics_buffer_read(redis_client, ok_key)
    assert again is not None
    assert again.count == 4
    assert not metrics_mark_clean(redis_client, ok_key, 1)
    assert metrics_mark_clean(redis_client, ok_key, 2)
    assert ok_key not in dict(metrics_dirty_keys(redis_client))


def test_failed_flush_keeps_the_counts_for_the_next_one(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    recorder = MetricsRecorder()
    recorder.record(deployment=deployment, version=1, status=200, latency_s=0.001, rows=2)

    async def flush_to(url: str) -> int:
        client = aioredis.from_url(url, socket_connect_timeout=0.2)
        try:
            return await recorder.flush(client)
        finally:
            await client.aclose()

    with pytest.raises(redis.ConnectionError):
        asyncio.run(flush_to(f"redis://127.0.0.1:{free_port()}/0"))  # nobody listens there
    assert recorder.pending_requests == 1
    recorder.record(deployment=deployment, version=1, status=200, latency_s=0.001, rows=2)
    assert asyncio.run(flush_to(redis_url)) == 2
    assert recorder.pending_requests == 0


def test_flush_of_many_cells_goes_out_in_batches_and_loses_none(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    recorder = MetricsRecorder()
    minute = 1_800_000_000
    for version in range(1200):  # 1,200 cells: three script calls of at most 500
        recorder.record(
            deployment=deployment, version=version, status=200, latency_s=0.002, rows=1, now=minute
        )

    async def flush() -> int:
        client = aioredis.from_url(redis_url)
        try:
            return await recorder.flush(client)
        finally:
            await client.aclose()

    assert asyncio.run(flush()) == 1200
    keys = list(redis_client.scan_iter(f"modelyard:metrics:{minute}:{deployment}:*", count=1000))
    assert len(keys) == 1200
    assert {int(redis_client.hget(key, "count")) for key in keys} == {1}
