"""Payload sampling (gateway.sampling) against real Redis."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from gateway.sampling import PayloadSampler, samples_key, truncate_rows

OUTPUTS = json.dumps({"predictions": [1, 2, 3, 4, 5]}).encode()
INPUTS = {"instances": [[1], [2], [3], [4], [5]], "params": {"threshold": 0.5}}


def offer(sampler: PayloadSampler, deployment: str, outputs: bytes = OUTPUTS) -> bool:
    return sampler.offer(
        deployment=deployment, version=3, api="predict", rows=5, inputs=INPUTS, outputs=outputs
    )


@pytest.fixture
def deployment(redis_client: redis.Redis) -> Iterator[str]:
    name = f"sample-{uuid.uuid4().hex[:10]}"
    yield name
    redis_client.delete(samples_key(name))


def flush(sampler: PayloadSampler, redis_url: str) -> int:
    async def run() -> int:
        client = aioredis.from_url(redis_url)
        try:
            return await sampler.flush(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_truncate_rows_cuts_top_level_lists_only() -> None:
    assert truncate_rows([1, 2, 3], 2) == [1, 2]
    assert truncate_rows(INPUTS, 2) == {"instances": [[1], [2]], "params": {"threshold": 0.5}}
    assert truncate_rows("scalar", 2) == "scalar"


def test_rate_decides_how_many_requests_are_kept() -> None:
    never = PayloadSampler(rate=0.0, max_rows=2, buffer_size=100, stream_maxlen=10)
    always = PayloadSampler(rate=1.0, max_rows=2, buffer_size=100, stream_maxlen=10)
    tenth = PayloadSampler(
        rate=0.1, max_rows=2, buffer_size=10_000, stream_maxlen=10, rng=random.Random(1)
    )
    assert not any(offer(never, "d") for _ in range(50))
    assert all(offer(always, "d") for _ in range(50))
    kept = sum(offer(tenth, "d") for _ in range(5000))
    assert 400 < kept < 600


def test_full_buffer_drops_and_counts_instead_of_growing() -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=5, stream_maxlen=10)
    results = [offer(sampler, "d") for _ in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert sampler.pending == 5
    assert sampler.stats.dropped_buffer_full == 3


def test_flush_writes_capped_rows_to_the_deployments_stream(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=100, stream_maxlen=10)
    offer(sampler, deployment)
    offer(sampler, deployment, outputs=b"not json")  # unusable: counted, not written
    assert flush(sampler, redis_url) == 1

    [(_, fields)] = redis_client.xrange(samples_key(deployment))
    entry = {k.decode(): v.decode() for k, v in fields.items()}
    assert entry["version"] == "3"
    assert entry["api"] == "predict"
    assert entry["rows"] == "5"
    assert float(entry["ts"]) > 1.7e9
    assert json.loads(entry["inputs"]) == {"instances": [[1], [2]], "params": {"threshold": 0.5}}
    assert json.loads(entry["outputs"]) == {"predictions": [1, 2]}
    assert sampler.stats.dropped_unusable == 1
    assert sampler.pending == 0


def test_stream_length_stays_near_its_cap(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=1, buffer_size=1000, stream_maxlen=50)
    for _ in range(600):
        offer(sampler, deployment)
    assert flush(sampler, redis_url) == 600
    # MAXLEN ~ trims whole stream nodes (100 entries each by default), never below the cap.
    assert 50 <= redis_client.xlen(samples_key(deployment)) <= 50 + 100


def test_oversized_samples_are_left_out() -> None:
    sampler = PayloadSampler(
        rate=1.0, max_rows=2, buffer_size=10, stream_maxlen=10, max_field_bytes=10
    )
    offer(sampler, "d")
    assert sampler._encode(sampler._pending[0]) is None
