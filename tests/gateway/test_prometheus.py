"""GET /metrics in the Prometheus text format, and MODELYARD_GATEWAY_METRICS=0."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import GatewaySettings
from tests.gateway.support import Deployments, Proc, auth, wait_until

BODY = {"instances": [[1.0, 2.0], [3.0, 4.0]]}


def scrape(gateway: Proc, headers: dict[str, str] | None = None) -> dict[str, list]:
    response = httpx.get(f"{gateway.url}/metrics", headers=headers or {}, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


def test_metrics_endpoint_counts_requests_errors_rows_and_latency(
    client: httpx.Client, gateway: Proc, deployments: Deployments, upstream_green: Proc
) -> None:
    name = deployments.new_name("prom")
    deployments.publish(name, upstream_green, version=2, slot="green")
    # Until the route arrives the probe gets the 401 of an unknown name, which is not counted
    # per deployment; the probe that succeeds is the first of 5 predictions.
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    assert client.post(f"/d/{name}/predict", json=BODY).status_code == 401  # one 401
    for _ in range(4):
        assert client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200
    assert client.post(f"/d/{name}/fail", json=BODY, headers=auth()).status_code == 500
    assert client.post(f"/d/{name}/slow?ms=300", json=BODY, headers=auth()).status_code == 200

    families = scrape(gateway)
    requests = families["modelyard_gateway_requests"]
    labels = {"deployment": name, "version": "2"}
    assert value(requests, "modelyard_gateway_requests_total", **labels, status="200") == 6
    assert value(requests, "modelyard_gateway_requests_total", **labels, status="500") == 1
    assert value(requests, "modelyard_gateway_requests_total", **labels, status="401") == 1
    errors = families["modelyard_gateway_errors"]
    assert value(errors, "modelyard_gateway_errors_total", **labels) == 1
    rows = families["modelyard_gateway_rows"]
    assert value(rows, "modelyard_gateway_rows_total", **labels) == 7 * 2  # 401: no rows

    latency = families["modelyard_gateway_request_duration_seconds"]
    count = value(latency, "modelyard_gateway_request_duration_seconds_count", **labels)
    assert count == 8
    assert value(latency, "modelyard_gateway_request_duration_seconds_sum", **labels) >= 0.3
    buckets = {
        s.labels["le"]: s.value
        for s in latency
        if s.name.endswith("_bucket") and s.labels["deployment"] == name
    }
    assert buckets["+Inf"] == 8
    # Cumulative and monotone; the 300 ms request is above the 0.25 s bound, the rest below.
    ordered = [buckets[le] for le in sorted(buckets, key=lambda le: float(le))]
    assert ordered == sorted(ordered)
    assert buckets["0.25"] == 7

    assert value(families["modelyard_gateway_redis_up"], "modelyard_gateway_redis_up") == 1
    assert value(families["modelyard_gateway_routes"], "modelyard_gateway_routes") >= 1


def test_metrics_counters_survive_the_flush_to_redis(
    client: httpx.Client,
    gateway: Proc,
    deployments: Deployments,
    upstream_green: Proc,
    redis_client: redis.Redis,
) -> None:
    """Counters never go down: flushed cells move into the totals /metrics is built from."""
    name = deployments.new_name("promflush")
    deployments.publish(name, upstream_green, version=2, slot="green")
    wait_until(
        lambda: client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
        deadline_s=5,
        what="route to reach the gateway",
    )
    wait_until(
        lambda: any(redis_client.scan_iter(f"modelyard:metrics:*:{name}:2:200")),
        deadline_s=5,
        what="a flush to Redis",
    )
    first = scrape(gateway)["modelyard_gateway_requests"]
    labels = {"deployment": name, "version": "2", "status": "200"}
    assert value(first, "modelyard_gateway_requests_total", **labels) == 1
    assert client.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200
    second = scrape(gateway)["modelyard_gateway_requests"]
    assert value(second, "modelyard_gateway_requests_total", **labels) == 2


def test_metrics_token_guards_the_endpoint(start_gateway: Callable[..., Proc], redis_url: str):
    gateway = start_gateway(redis_url, env={"MODELYARD_GATEWAY_METRICS_TOKEN": "s3cret"})
    missing = httpx.get(f"{gateway.url}/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_metrics_token"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "modelyard_gateway_routes" in scrape(gateway, {"Authorization": "Bearer s3cret"})


def test_metrics_off_records_nothing_but_still_serves(
    start_gateway: Callable[..., Proc],
    redis_url: str,
    redis_client: redis.Redis,
    deployments: Deployments,
    upstream_blue: Proc,
) -> None:
    gateway = start_gateway(
        redis_url,
        env={"MODELYARD_GATEWAY_METRICS": "0", "MODELYARD_GATEWAY_SAMPLE_RATE": "0"},
    )
    name = deployments.new_name("nometrics")
    deployments.publish(name, upstream_blue)
    with httpx.Client(base_url=gateway.url, timeout=5) as http:
        wait_until(
            lambda: http.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200,
            deadline_s=5,
            what="route to reach the gateway",
        )
        for _ in range(5):
            assert http.post(f"/d/{name}/predict", json=BODY, headers=auth()).status_code == 200
        health = http.get("/healthz").json()
    # Three flush intervals (0.2 s each in tests) pass; nothing may have reached Redis.
    time.sleep(0.6)
    assert list(redis_client.scan_iter(f"modelyard:metrics:*:{name}:*")) == []
    assert redis_client.xlen(f"modelyard:samples:{name}") == 0
    assert health["metrics_pending_requests"] == 0
    families = scrape(gateway)
    assert not [s for s in families.get("modelyard_gateway_requests", []) if s.labels]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", False), ("off", False), ("false", False), ("1", True), ("TRUE", True), ("", True)],
)
def test_metrics_setting_reads_on_and_off_words(raw: str, expected: bool) -> None:
    settings = GatewaySettings.from_env({"MODELYARD_GATEWAY_METRICS": raw})
    assert settings.metrics is expected
    # Worker processes get the settings through the environment: the round trip holds.
    assert GatewaySettings.from_env(settings.to_env()).metrics is expected


def test_metrics_setting_refuses_other_words() -> None:
    with pytest.raises(ValueError, match="MODELYARD_GATEWAY_METRICS must be 1/0"):
        GatewaySettings.from_env({"MODELYARD_GATEWAY_METRICS": "maybe"})
