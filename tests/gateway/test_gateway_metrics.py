"""Metrics and samples recorded by a real gateway process and flushed to Redis."""

from __future__ import annotations

import dataclasses
import json

import httpx
import redis

from gateway.metric_buffers import MinuteBuffer, metrics_buffer_read
from gateway.metrics import BUCKET_BOUNDS_MS, merge_histograms, percentile_from_histogram
from gateway.sampling import samples_key
from tests.gateway.support import Deployments, Proc, auth, wait_until

BODY = {"instances": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}


def buffers_of(redis_client: redis.Redis, name: str) -> dict[int, MinuteBuffer]:
    """Totals per status for one deployment, summed over minutes (a test may span two)."""
    buffers = [
        metrics_buffer_read(redis_client, key.decode())
        for key in redis_client.scan_iter(f"modelyard:metrics:*:{name}:*")
    ]
    totals: dict[int, MinuteBuffer] = {}
    for status in {b.status for b in buffers if b is not None}:
        group = [b for b in buffers if b is not None and b.status == status]
        totals[status] = dataclasses.replace(
            group[0],
            count=sum(b.count for b in group),
            rows=sum(b.rows for b in group),
            errors=sum(b.errors for b in group),
            latency_us_sum=sum(b.latency_us_sum for b in group),
            histogram=tuple(merge_histograms(b.histogram for b in group)),
        )
    return totals


def test_requests_are_counted_per_status_with_rows_errors_and_latency(
    client: httpx.Client, deployments: Deployments, redis_client: redis.Redis, upstream_green: Proc
) -> None:
    name = deployments.new_name("metrics")
    deployments.publish(name, upstream_green, version=2, slot="green")
    # Until the route arrives the probe gets the 401 of an unknown name, which is not recorded
    # per deployment; the probe that succeeds is the first of 7 predictions.
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    assert client.post(f"/d/{name}/predict", json=BODY).status_code == 401  # one, 0 rows
    for _ in range(6):
        assert client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200
    for _ in range(2):
        assert client.post(f"/d/{name}/fail", json=BODY, headers=auth()).status_code == 500
    assert client.post(f"/d/{name}/predict", json={}, headers=auth()).status_code == 200
    bad = client.post(
        f"/d/{name}/predict", content=b"[]", headers={**auth(), "Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    slow = client.post(f"/d/{name}/slow?ms=300", json=BODY, headers=auth())
    assert slow.status_code == 200

    def all_flushed() -> bool:
        buffers = buffers_of(redis_client, name)
        return sum(b.count for b in buffers.values()) == 13

    wait_until(all_flushed, deadline_s=5, what="the gateway to flush 13 requests")
    by_status = buffers_of(redis_client, name)

    assert set(by_status) == {200, 400, 401, 500}
    ok = by_status[200]
    # 7 + slow with 3 rows each, plus one body without "instances" counted as 1 row.
    assert (ok.count, ok.rows, ok.errors) == (9, 8 * 3 + 1, 0)
    assert (by_status[500].count, by_status[500].rows, by_status[500].errors) == (2, 6, 2)
    assert (by_status[400].count, by_status[400].rows) == (1, 0)
    assert (by_status[401].count, by_status[401].rows) == (1, 0)
    for buffer in by_status.values():
        assert sum(buffer.histogram) == buffer.count
        assert buffer.latency_us_sum > 0

    # The slow request is the top of the 200 histogram: >= 300 ms and in the right bucket.
    top = max(i for i, n in enumerate(ok.histogram) if n)
    assert BUCKET_BOUNDS_MS[top] >= 300
    assert BUCKET_BOUNDS_MS[top - 1] < 400
    p100 = percentile_from_histogram(ok.histogram, 1.0)
    p50 = percentile_from_histogram(ok.histogram, 0.5)
    assert p100 is not None and p50 is not None
    assert 300 <= p100 < 450
    assert p50 < 100  # the quick ones
    print(f"\nthrough-gateway latency of 8 fast predictions + 1 slow: p50 {p50:.2f} ms")


def test_samples_are_capped_in_rows_and_stream_length(
    client: httpx.Client, deployments: Deployments, redis_client: redis.Redis, upstream_blue: Proc
) -> None:
    name = deployments.new_name("samples")
    deployments.publish(name, upstream_blue, version=1)
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    body = {"instances": [[float(i), 1.0] for i in range(5)]}
    for _ in range(250):
        assert client.post(f"/d/{name}/predict", json=body, headers=auth()).status_code == 200
    client.post(f"/d/{name}/fail", json=body, headers=auth())  # errors are not sampled

    key = samples_key(name)
    # 250 + the probe request; the 500 is not sampled.
    wait_until(
        lambda: client.get("/healthz").json()["samples_written"] >= 251,
        deadline_s=5,
        what="all samples to be written",
    )
    # Test gateway: rate 1.0, 2 rows per sample, MAXLEN ~ 20 (Redis trims whole 100-entry nodes).
    length = redis_client.xlen(key)
    assert 20 <= length <= 20 + 100
    for _, fields in redis_client.xrange(key):
        inputs = json.loads(fields[b"inputs"])
        outputs = json.loads(fields[b"outputs"])
        assert fields[b"version"] == b"1"
        assert fields[b"rows"] in (b"5", b"3")
        assert len(inputs["instances"]) <= 2
        assert len(outputs["predictions"]) <= 2
        assert "error" not in outputs
    print(f"\n251 sampled requests -> stream length {length} (cap ~20)")
