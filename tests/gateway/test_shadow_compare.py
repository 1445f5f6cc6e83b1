"""The shadow comparison of two answers, and the Redis cells' write and read (real Redis)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis

from gateway.balancer import Balancer
from gateway.routes import Arm, Route
from gateway.shadow import ShadowJob, ShadowMirror, answers_compare
from gateway.shadow_reports import ShadowTotals, shadow_key, shadow_read


def answer(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_predictions_compared_element_wise_and_probabilities_value_by_value() -> None:
    result = answers_compare(
        answer(predictions=["a", "b", "c"], probabilities=[[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]),
        answer(predictions=["a", "c", "c"], probabilities=[[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]]),
    )
    assert (result.outcome, result.rows, result.agree) == ("compared", 3, 2)
    assert result.prob_values == 6
    assert result.prob_abs_sum == pytest.approx(0.1 + 0.1 + 0 + 0 + 0.4 + 0.4)
    assert result.prob_abs_max == pytest.approx(0.4)
    assert not result.prob_mismatch


def test_answers_that_cannot_be_compared_say_why() -> None:
    ok = answer(predictions=[1])
    assert answers_compare(b"not json", ok).outcome == "unparsable"
    assert answers_compare(ok, b"[1]").outcome == "unparsable"
    assert answers_compare(ok, answer(result=[1])).outcome == "unparsable"
    assert answers_compare(ok, answer(predictions=[1, 2])).outcome == "shape_mismatch"
    # Labels still compared when only the probabilities differ in shape (or one lacks them).
    one_sided = answers_compare(answer(predictions=[1], probabilities=[[0.2, 0.8]]), ok)
    assert (one_sided.outcome, one_sided.agree, one_sided.prob_mismatch) == ("compared", 1, True)
    classes = answers_compare(
        answer(predictions=[1], probabilities=[[0.2, 0.8]]),
        answer(predictions=[1], probabilities=[[0.2, 0.7, 0.1]]),
    )
    assert classes.prob_mismatch and classes.prob_values == 0
    # A flat list (one score per row) is compared too.
    flat = answers_compare(
        answer(predictions=[1, 0], probabilities=[0.75, 0.5]),
        answer(predictions=[1, 1], probabilities=[0.5, 0.75]),
    )
    assert (flat.agree, flat.prob_values, flat.prob_abs_sum) == (1, 2, 0.5)
    assert answers_compare(answer(predictions=[]), answer(predictions=[])).rows == 0


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _route(name: str) -> Route:
    return Route(
        deployment=name,
        version=1,
        slot="blue",
        upstream="http://127.0.0.1:1",
        key_hashes=(),
        shadow=Arm(version=4, slot="green", upstreams=("http://127.0.0.1:2",), weight=10_000),
    )


def _mirror() -> ShadowMirror:
    balancer = Balancer(
        probe_initial_s=0.1, probe_max_s=0.2, probe_timeout_s=0.5, on_probe_failed=lambda r: None
    )
    return ShadowMirror(balancer=balancer, queue_size=1, workers=1, timeout_s=1.0)


def test_flush_sums_cells_across_processes_keeps_the_max_and_reader_sums_the_window(
    redis_url: str, sync_client: redis.Redis
) -> None:
    name = f"shunit-{uuid.uuid4().hex[:8]}"
    minute = int(time.time() // 60)
    try:

        async def two_gateways() -> None:
            client = aioredis.from_url(redis_url)
            for peak, agree in ((0.25, 3), (0.125, 1)):  # two processes, each one flush
                mirror = _mirror()
                cell = mirror._cell(_route(name))
                cell.counts.update(mirrored=4, compared=4, rows=4, agree=agree, prob_values=8)
                cell.sums.update(prob_abs_sum=1.0, live_ms_sum=10.0, shadow_ms_sum=14.0)
                cell.peak = peak
                assert await mirror.flush(client) == 1
                assert await mirror.flush(client) == 0  # nothing left to write
            await client.aclose()

        asyncio.run(two_gateways())
        key = shadow_key(name, 4, minute)
        assert float(sync_client.hget(key, "prob_abs_max")) == 0.25  # type: ignore[arg-type]
        assert sync_client.ttl(key) > 86_400
        window = shadow_read(
            sync_client, name, 4, datetime.fromtimestamp(minute * 60, UTC), minute * 60 + 60
        )
        assert (window.mirrored, window.rows, window.agree) == (8, 8, 4)
        assert window.agreement_rate == 0.5
        assert window.prob_abs_mean == 2.0 / 16
        assert window.prob_abs_max == 0.25
        assert window.latency_diff_ms_mean == pytest.approx(8.0 / 8)
        # The window is half-open: the minute before, or a window ending at its start, has none.
        assert shadow_read(sync_client, name, 4, minute * 60 - 60, minute * 60).mirrored == 0
        empty = shadow_read(sync_client, name, 5, minute * 60, minute * 60 + 60)
        assert empty == ShadowTotals()
        assert empty.agreement_rate is None and empty.error_rate is None  # never "agrees"
    finally:
        sync_client.delete(*sync_client.keys(f"modelyard:shadow:{name}:*") or ["-"])


def test_a_failed_flush_keeps_its_cells_for_the_next_one(
    redis_url: str, sync_client: redis.Redis
) -> None:
    name = f"shunit-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        mirror = _mirror()
        mirror._cell(_route(name)).counts["mirrored"] = 3
        dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        with pytest.raises((redis.RedisError, OSError)):
            await mirror.flush(dead)
        await dead.aclose()
        mirror._cell(_route(name)).counts["mirrored"] += 2
        client = aioredis.from_url(redis_url)
        # The failed batch again (same id), then what came meanwhile as a batch of its own.
        assert await mirror.flush(client) == 2
        await client.aclose()

    try:
        asyncio.run(run())
        now = time.time()
        assert shadow_read(sync_client, name, 4, now - 120, now + 60).mirrored == 5
    finally:
        sync_client.delete(*sync_client.keys(f"modelyard:shadow:{name}:*") or ["-"])


def test_a_batch_sent_twice_with_its_id_counts_once(
    redis_url: str, sync_client: redis.Redis
) -> None:
    """What a retry after a lost answer does: Redis applied it, the gateway sends it again."""
    name = f"shunit-{uuid.uuid4().hex[:8]}"
    flush_id = uuid.uuid4().hex

    async def run() -> None:
        client = aioredis.from_url(redis_url)
        mirror = _mirror()
        mirror._cell(_route(name)).counts["mirrored"] = 3
        cells = mirror._cells
        for _ in range(2):
            mirror._unsent, mirror._cells = (flush_id, cells), {}
            await mirror.flush(client)
            assert mirror._unsent is None
        await client.aclose()

    try:
        asyncio.run(run())
        now = time.time()
        assert shadow_read(sync_client, name, 4, now - 120, now + 60).mirrored == 3
        assert sync_client.ttl(f"modelyard:shadow-flush:{flush_id}") > 0
    finally:
        sync_client.delete(*sync_client.keys(f"modelyard:shadow:{name}:*") or ["-"])


def test_offer_drops_when_the_queue_is_full_and_counts_it() -> None:
    async def run() -> tuple[bool, bool, list[int], int]:
        mirror = _mirror()
        mirror._queue = asyncio.Queue(maxsize=1)  # as start() makes it, without workers
        route = _route("shunit-offer")
        job = ShadowJob(route, b"/predict", b"", b"{}", 200, b"{}", 1.0)
        first, second = mirror.offer(job), mirror.offer(job)
        cell = mirror._cell(route)
        return first, second, mirror.counters["shunit-offer"], cell.counts["dropped"]

    first, second, counters, dropped = asyncio.run(run())
    assert (first, second) == (True, False)
    assert counters == [0, 1, 0] and dropped == 1


def test_relay_hands_jobs_over_in_frames_and_drops_past_its_bound_without_writing() -> None:
    """The gateway's end of the shadow process: a route described once per route object, a
    frame per job, and past shadow_queue_size jobs in the process's hands a drop, counted in
    the gateway's own cells and counters (nothing written for it)."""
    from gateway.settings import GatewaySettings
    from gateway.shadow_process import ShadowRelay, frame_read

    async def run() -> tuple[list[bool], ShadowRelay, Route]:
        relay = ShadowRelay(settings=GatewaySettings(shadow_queue_size=2))  # no process started
        route = _route("shunit-relay")
        job = ShadowJob(route, b"/predict", b"x-h: 1\r\n", b'{"instances": [[1]]}', 200, b"{}", 2.5)
        return [relay.offer(job) for _ in range(3)], relay, route

    offered, relay, route = asyncio.run(run())
    assert offered == [True, True, False]
    assert relay.pending == 2
    assert relay.counters == {"shunit-relay": [0, 1, 0]}
    assert relay.totals() == (0, 1, 0)
    assert relay._cell(route).counts["dropped"] == 1
    frames = []
    data = b"".join(relay._out)
    while data:
        size = int.from_bytes(data[:4], "little")
        frames.append(frame_read(data[4 : 4 + size]))
        data = data[4 + size :]
    assert [frame[0] for frame in frames] == [0, 1, 1]  # the route once, then each job
    assert Route.from_json(frames[0][2]) == route
    assert frames[1] == (
        1, "shunit-relay", b"/predict", b"x-h: 1\r\n", b'{"instances": [[1]]}', 200, b"{}", 2.5
    )  # fmt: skip
    # What the process reports back frees the bound and adds its counts to the gateway's.
    relay._done, relay._theirs = 2, {"shunit-relay": [2, 0, 1]}
    assert relay.pending == 0
    assert relay.counters == {"shunit-relay": [2, 1, 1]}


def _frames(relay) -> list[tuple]:
    from gateway.shadow_process import frame_read

    frames, data = [], b"".join(relay._out)
    while data:
        size = int.from_bytes(data[:4], "little")
        frames.append(frame_read(data[4 : 4 + size]))
        data = data[4 + size :]
    relay._out.clear()
    return frames


def test_relay_tells_the_process_of_each_route_change_of_a_mirrored_deployment() -> None:
    """After a job, the process hears of that deployment's new route (a shadow promoted: no
    shadow arm), or that it is gone; an equal route re-read says nothing; a deployment it
    never mirrored for is not described."""
    import dataclasses

    from gateway.settings import GatewaySettings
    from gateway.shadow_process import ShadowRelay

    async def run() -> list[list[tuple]]:
        relay = ShadowRelay(settings=GatewaySettings())  # no process started
        route, other = _route("shunit-change"), _route("shunit-never")
        relay.offer(ShadowJob(route, b"/predict", b"", b"{}", 200, b"{}", 1.0))
        seen = [_frames(relay)]
        promoted = dataclasses.replace(route, shadow=None)
        relay.routes_changed(
            {route.deployment: dataclasses.replace(route), other.deployment: other}
        )
        seen.append(_frames(relay))  # equal to what was sent: nothing
        relay.routes_changed({route.deployment: promoted, other.deployment: other})
        seen.append(_frames(relay))
        relay.routes_changed({other.deployment: other})
        seen.append(_frames(relay))
        return seen

    after_job, equal, promoted, gone = asyncio.run(run())
    assert [frame[0] for frame in after_job] == [0, 1]
    assert equal == []
    assert [(frame[0], frame[1]) for frame in promoted] == [(0, "shunit-change")]
    assert Route.from_json(promoted[0][2]).shadow is None
    assert gone == [(2, "shunit-change")]


def test_a_mirror_drops_jobs_of_a_shadow_its_route_no_longer_has() -> None:
    import dataclasses

    mirror = _mirror()
    route = _route("shunit-stale")
    job = ShadowJob(route, b"/predict", b"", b"{}", 200, b"{}", 1.0)
    assert not mirror._stale(job)  # no route table yet: nothing is judged stale
    mirror.routes_changed({route.deployment: dataclasses.replace(route)})
    assert not mirror._stale(job)
    replaced = dataclasses.replace(route, shadow=dataclasses.replace(route.shadow, version=5))
    for table in (
        {route.deployment: dataclasses.replace(route, shadow=None)},
        {},
        {route.deployment: replaced},
    ):
        mirror.routes_changed(table)
        assert mirror._stale(job), table
