"""Payload sampling (gateway.sampling) against real Redis."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis

from gateway.sampling import PayloadSampler, samples_key, truncate_rows
from tests.gateway.support import free_port

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


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_cap_keeps_a_minute_of_burst_then_the_steady_rate_per_deployment() -> None:
    clock = _Clock()
    sampler = PayloadSampler(
        rate=1.0, max_rows=2, buffer_size=10_000, stream_maxlen=10, max_per_s=2.0, clock=clock
    )
    # A minute's worth (120) goes through at once: light traffic and short bursts are whole.
    assert sum(offer(sampler, "a") for _ in range(500)) == 120
    assert sampler.stats.over_rate_cap == 380
    # Another deployment has a bucket of its own.
    assert sum(offer(sampler, "b") for _ in range(500)) == 120
    # Then the steady rate: 10 s later, 20 more for each.
    clock.now += 10
    assert sum(offer(sampler, "a") for _ in range(500)) == 20
    clock.now += 0.25  # half a token: nothing yet
    assert not offer(sampler, "a")
    clock.now += 0.25
    assert offer(sampler, "a")
    # An idle hour refills the bucket only up to a minute's worth.
    clock.now += 3600
    assert sum(offer(sampler, "a") for _ in range(500)) == 120
    assert sampler.stats.sampled == 120 + 120 + 20 + 1 + 120


def test_rate_cap_of_zero_means_no_cap_and_applies_after_the_rate() -> None:
    uncapped = PayloadSampler(rate=1.0, max_rows=2, buffer_size=10_000, stream_maxlen=10)
    assert all(offer(uncapped, "d") for _ in range(1000))
    tenth = PayloadSampler(
        rate=0.1,
        max_rows=2,
        buffer_size=10_000,
        stream_maxlen=10,
        max_per_s=1.0,
        rng=random.Random(1),
        clock=_Clock(),
    )
    kept = sum(offer(tenth, "d") for _ in range(5_000))
    # Drawn first (about 500 of 5,000), then capped at the bucket's 60.
    assert kept == 60
    assert 400 < tenth.stats.over_rate_cap + kept < 600


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


# --- the batched flush (one script call per batch) -------------------------------------------


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def offer_request(sampler: PayloadSampler, deployment: str, n: int, *, rows: int = 3) -> None:
    """Offer request number ``n``: its body says ``n`` in its first row, as it came in."""
    body = {"instances": [[n, i] for i in range(rows)]}
    sampler.offer(
        deployment=deployment,
        version=1,
        api="predict",
        rows=rows,
        inputs=body,
        raw_inputs=compact(body),
        outputs=compact({"predictions": [n] * rows}),
    )


def numbers_in(redis_client: redis.Redis, deployment: str) -> list[int]:
    return [
        json.loads(fields[b"inputs"])["instances"][0][0]
        for _, fields in redis_client.xrange(samples_key(deployment))
    ]


@pytest.fixture
def other_deployment(redis_client: redis.Redis) -> Iterator[str]:
    name = f"sample-{uuid.uuid4().hex[:10]}"
    yield name
    redis_client.delete(samples_key(name))


def test_batches_keep_the_order_of_requests_per_stream(
    redis_client: redis.Redis, redis_url: str, deployment: str, other_deployment: str
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=1000, stream_maxlen=1000)
    for n in range(150):
        offer_request(sampler, deployment if n % 3 else other_deployment, n)

    async def run() -> int:
        client = aioredis.from_url(redis_url)
        try:
            return await sampler.flush(client, batch_size=16)  # 10 script calls
        finally:
            await client.aclose()

    assert asyncio.run(run()) == 150
    assert numbers_in(redis_client, deployment) == [n for n in range(150) if n % 3]
    assert numbers_in(redis_client, other_deployment) == [n for n in range(150) if not n % 3]
    assert sampler.stats.written == 150 and sampler.pending == 0


def test_stream_cap_holds_across_many_batched_flushes(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=1000, stream_maxlen=30)
    for round_ in range(5):
        for n in range(200):
            offer_request(sampler, deployment, round_ * 200 + n)
        assert flush(sampler, redis_url) == 200
        assert 30 <= redis_client.xlen(samples_key(deployment)) <= 30 + 100
    # Trimming takes the oldest: what is left is the newest, in order.
    kept = numbers_in(redis_client, deployment)
    assert kept == list(range(1000 - len(kept), 1000))


def test_failed_flush_loses_nothing_and_keeps_the_order(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=100, stream_maxlen=1000)
    for n in range(40):
        offer_request(sampler, deployment, n)

    async def fail_then_recover() -> int:
        # A real client of a port nobody listens on: the call fails like an outage.
        down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        with pytest.raises(redis.exceptions.ConnectionError):
            await sampler.flush(down, batch_size=16)
        await down.aclose()
        assert sampler.pending == 40  # the failed batch went back, in front
        for n in range(40, 50):  # requests go on meanwhile
            offer_request(sampler, deployment, n)
        up = aioredis.from_url(redis_url)
        try:
            return await sampler.flush(up, batch_size=16)
        finally:
            await up.aclose()

    assert asyncio.run(fail_then_recover()) == 50
    assert numbers_in(redis_client, deployment) == list(range(50))
    assert sampler.stats.dropped_redis_error == 0


def test_failed_flush_still_respects_the_buffer_size() -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=10, stream_maxlen=1000)
    for n in range(6):
        offer_request(sampler, "d", n)
    taken = [sampler._pending.popleft() for _ in range(6)]  # as a flush takes a batch
    for n in range(6, 14):  # ... while requests fill the buffer
        offer_request(sampler, "d", n)
    sampler._restore(taken)
    # Over the cap by 4: the 4 oldest go, counted; the rest keeps its order.
    assert [item.inputs["instances"][0][0] for item in sampler._pending] == list(range(4, 14))
    assert sampler.stats.dropped_redis_error == 4


def test_an_entry_redis_refuses_does_not_stop_the_rest_of_its_batch(
    redis_client: redis.Redis, redis_url: str, deployment: str, other_deployment: str
) -> None:
    redis_client.set(samples_key(other_deployment), "not a stream")  # XADD: WRONGTYPE
    sampler = PayloadSampler(rate=1.0, max_rows=2, buffer_size=100, stream_maxlen=1000)
    for n in range(6):
        offer_request(sampler, other_deployment if n == 2 else deployment, n)
    assert flush(sampler, redis_url) == 5
    assert numbers_in(redis_client, deployment) == [0, 1, 3, 4, 5]
    assert sampler.stats.dropped_redis_error == 1
    assert sampler.pending == 0  # not retried: it would fail forever


# --- skipping the JSON round trip ------------------------------------------------------------


def entries(redis_client: redis.Redis, deployment: str) -> list[dict[str, bytes]]:
    return [
        {k.decode(): v for k, v in fields.items() if k != b"ts"}
        for _, fields in redis_client.xrange(samples_key(deployment))
    ]


def test_uncut_raw_bodies_and_cut_bodies_give_identical_entries(
    redis_client: redis.Redis, redis_url: str, deployment: str, other_deployment: str
) -> None:
    """The same two rows reach the stream byte for byte alike, whether they came as a
    2-row request (stored as received, nothing parsed) or a cut 5-row one (re-encoded)."""
    max_rows = 2
    rows = [{"age": 31.5, "city": "Zürich"}, {"age": 40, "city": "Köln"}]
    extra = [{"age": i, "city": "x"} for i in range(3)]
    # Long enough that the answer itself is parsed and cut.
    long_answer = {"predictions": [0.25, 0.75, *[0.5] * 3], "model": "m"}
    short_answer = {"predictions": [0.25, 0.75], "model": "m"}
    assert len(compact(long_answer)) > 2 * max_rows + 2
    sampler = PayloadSampler(rate=1.0, max_rows=max_rows, buffer_size=10, stream_maxlen=100)
    sampler.offer(  # skip-parse path
        deployment=deployment,
        version=4,
        api="predict",
        rows=2,
        inputs={"instances": rows, "params": {"k": 1}},
        raw_inputs=json.dumps(
            {"instances": rows, "params": {"k": 1}}, separators=(",", ":")
        ).encode(),
        outputs=compact(short_answer),
    )
    sampler.offer(  # trim path
        deployment=other_deployment,
        version=4,
        api="predict",
        rows=5,
        inputs={"instances": rows + extra, "params": {"k": 1}},
        raw_inputs=compact({"instances": rows + extra, "params": {"k": 1}}),
        outputs=compact(long_answer),
    )
    assert flush(sampler, redis_url) == 2
    [skipped] = entries(redis_client, deployment)
    [cut] = entries(redis_client, other_deployment)
    assert cut.pop("rows") == b"5" and skipped.pop("rows") == b"2"
    assert skipped == cut
    assert json.loads(cut["inputs"]) == {"instances": rows, "params": {"k": 1}}
    assert json.loads(cut["outputs"]) == short_answer


def test_raw_body_as_sent_reads_back_like_the_encoded_one(
    redis_client: redis.Redis, redis_url: str, deployment: str, other_deployment: str
) -> None:
    """A body sent with spaces is stored with them; the monitoring reader (which parses)
    gets exactly the same samples as from the re-encoded path (no raw bytes given)."""
    from monitoring.services.drift_profiles import samples_read

    body = {"instances": [{"age": 31.5, "city": "Zürich"}, [1, 2]]}
    answer = b'{ "predictions" : [1, 0] }'
    sampler = PayloadSampler(rate=1.0, max_rows=100, buffer_size=10, stream_maxlen=100)
    common = {"version": 2, "api": "predict", "rows": 2, "inputs": body, "outputs": answer}
    sampler.offer(deployment=deployment, raw_inputs=json.dumps(body, indent=2).encode(), **common)
    sampler.offer(deployment=other_deployment, **common)  # type: ignore[arg-type]
    assert flush(sampler, redis_url) == 2

    [raw] = entries(redis_client, deployment)
    assert raw["inputs"] == json.dumps(body, indent=2).encode()  # as received
    assert raw["outputs"] == answer
    now = datetime.now(UTC)
    window = {"start": now - timedelta(minutes=1), "end": now + timedelta(minutes=1)}
    from_raw = samples_read(deployment=deployment, client=redis_client, **window)
    from_encoded = samples_read(deployment=other_deployment, client=redis_client, **window)
    assert from_raw == from_encoded
    assert from_raw[2].records == [{"age": 31.5, "city": "Zürich"}]
    assert from_raw[2].lists == [[1, 2]] and from_raw[2].predictions == [1, 0]


@pytest.mark.parametrize(
    ("answer", "stored"),
    [
        # max_rows 3: a list of 4 items takes at least 9 bytes ("[0,0,0,0]"), so up to 8 bytes
        # nothing can need a cut and the answer is not even parsed (broken JSON stays too).
        (b"[0,0, 0]", b"[0,0, 0]"),
        (b"[0,0,", b"[0,0,"),
        (b"[0, 0, 0]", b"[0, 0, 0]"),  # parsed, nothing to cut: kept as received
        (b"[0,0,0,0]", b"[0,0,0]"),  # parsed and cut
        (b'{"p": [1, 2, 3, 4, 5], "m": "x"}', b'{"p":[1,2,3],"m":"x"}'),
    ],
)
def test_answers_are_parsed_only_when_long_enough_to_need_a_cut(
    redis_client: redis.Redis, redis_url: str, deployment: str, answer: bytes, stored: bytes
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=3, buffer_size=10, stream_maxlen=10)
    sampler.offer(
        deployment=deployment,
        version=1,
        api="predict",
        rows=1,
        inputs={"instances": [[1]]},
        raw_inputs=b'{"instances": [[1]]}',
        outputs=answer,
    )
    assert flush(sampler, redis_url) == 1
    [entry] = entries(redis_client, deployment)
    assert entry["outputs"] == stored
    assert entry["inputs"] == b'{"instances": [[1]]}'


def test_a_name_that_would_break_the_entry_format_is_left_out(
    redis_client: redis.Redis, redis_url: str, deployment: str
) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=3, buffer_size=10, stream_maxlen=10)
    for api in ("predict", "bad\nname", "predict"):  # the gateway lets no such name through
        sampler.offer(
            deployment=deployment,
            version=1,
            api=api,
            rows=1,
            inputs={"instances": [[1]]},
            raw_inputs=b'{"instances":[[1]]}',
            outputs=b"[1]",
        )
    assert flush(sampler, redis_url) == 2
    assert [e["api"] for e in entries(redis_client, deployment)] == [b"predict", b"predict"]
    assert sampler.stats.dropped_unusable == 1


@pytest.mark.parametrize(
    "answer", [b"not json", b'"a string"', b"42", b"", b"{broken" + b" " * 300]
)
def test_answers_that_are_not_a_json_object_or_array_are_left_out(answer: bytes) -> None:
    sampler = PayloadSampler(rate=1.0, max_rows=100, buffer_size=10, stream_maxlen=10)
    offer(sampler, "d", outputs=answer)
    assert sampler._encode(sampler._pending[0]) is None
