"""The route table contract (gateway.routes), against real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from gateway.routes import (
    ROUTES_CHANNEL,
    ROUTES_KEY,
    Route,
    RouteError,
    deployment_key_hash,
    route_publish,
    route_remove,
    routes_read_all,
)
from tests.gateway.support import Deployments


def make_route(**overrides: object) -> Route:
    fields: dict[str, object] = {
        "deployment": "churn-prod",
        "version": 3,
        "slot": "green",
        "upstream": "http://127.0.0.1:3001",
        "key_hashes": (deployment_key_hash("secret"),),
        "state": "live",
    }
    fields.update(overrides)
    return Route(**fields)  # type: ignore[arg-type]


def test_deployment_key_hash_is_sha256_hex() -> None:
    assert deployment_key_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_route_json_round_trip_keeps_every_field() -> None:
    route = make_route()
    data = json.loads(route.to_json())
    assert set(data) == {
        "deployment",
        "version",
        "slot",
        "upstream",
        "upstreams",
        "key_hashes",
        "state",
        "updated_at",
    }
    assert data["key_hashes"] == [deployment_key_hash("secret")]
    assert data["upstreams"] == ["http://127.0.0.1:3001"]
    assert Route.from_json(route.to_json()) == route


def test_replicas_are_listed_with_upstream_first_and_old_values_still_parse() -> None:
    replicas = ("http://127.0.0.1:3001", "http://127.0.0.1:3002")
    route = make_route(upstream="", upstreams=replicas)
    assert route.upstream == replicas[0] and route.upstreams == replicas
    assert Route.from_json(route.to_json()) == route
    old = json.loads(make_route().to_json())
    del old["upstreams"]  # a value written before replicas existed
    assert Route.from_json(json.dumps(old)).upstreams == ("http://127.0.0.1:3001",)
    for bad in (
        {"upstream": "http://127.0.0.1:9", "upstreams": replicas},
        {"upstreams": (replicas[0], replicas[0])},
        {"upstreams": (replicas[0], "ftp://x")},
    ):
        with pytest.raises(RouteError, match="upstream"):
            make_route(**bad)


@pytest.mark.parametrize(
    ("overrides", "field_named"),
    [
        ({"slot": "purple"}, "slot"),
        ({"state": "paused"}, "state"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"upstream": "ftp://127.0.0.1:3001"}, "upstream"),
        ({"upstream": "http://127.0.0.1:3001/predict"}, "upstream"),
        ({"deployment": "has:colon"}, "deployment"),
        ({"key_hashes": ("not-a-hash",)}, "key_hashes"),
    ],
)
def test_invalid_route_is_refused_naming_the_field(
    overrides: dict[str, object], field_named: str
) -> None:
    with pytest.raises(RouteError, match=field_named):
        make_route(**overrides)


def test_from_json_names_missing_fields() -> None:
    with pytest.raises(RouteError, match=r"missing field.*key_hashes.*upstream"):
        Route.from_json(json.dumps({"deployment": "a", "version": 1, "slot": "blue"}))
    with pytest.raises(RouteError, match="not valid JSON"):
        Route.from_json("{nope")


def test_publish_stores_the_route_and_announces_its_name(
    redis_client: redis.Redis, deployments: Deployments
) -> None:
    name = deployments.new_name("contract")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ROUTES_CHANNEL)
    try:
        pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        route = make_route(deployment=name)
        route_publish(redis_client, route)
        deadline = time.monotonic() + 2
        received = []
        while time.monotonic() < deadline and name.encode() not in received:
            message = pubsub.get_message(timeout=0.2)
            if message:
                received.append(message["data"])
        assert name.encode() in received
        assert routes_read_all(redis_client)[name] == route

        route_remove(redis_client, name)
        assert name not in routes_read_all(redis_client)
    finally:
        pubsub.close()


def test_read_all_leaves_out_invalid_entries_and_keeps_the_rest(
    redis_client: redis.Redis, deployments: Deployments, caplog: pytest.LogCaptureFixture
) -> None:
    good = deployments.new_name("good")
    bad = deployments.new_name("bad")
    mismatched = deployments.new_name("mismatch")
    route_publish(redis_client, make_route(deployment=good))
    redis_client.hset(ROUTES_KEY, bad, '{"deployment": "x"}')
    redis_client.hset(ROUTES_KEY, mismatched, make_route(deployment=good).to_json())

    routes = routes_read_all(redis_client)

    assert good in routes
    assert bad not in routes
    assert mismatched not in routes
    assert f"ignoring route '{bad}'" in caplog.text
