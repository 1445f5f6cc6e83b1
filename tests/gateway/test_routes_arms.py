"""The route contract's progressive-delivery fields (canary, shadow, sticky), against real Redis."""

from __future__ import annotations

import json

import pytest
import redis

from gateway.arms import ArmRefused, arm_choose, sticky_bucket, sticky_field_key
from gateway.routes import (
    ROUTES_KEY,
    Arm,
    Route,
    RouteError,
    Sticky,
    deployment_key_hash,
    route_publish,
    routes_read_all,
)
from tests.gateway.support import Deployments

CANARY = Arm(version=8, slot="blue", upstreams=("http://127.0.0.1:3101",), weight=500)


def make_route(**overrides: object) -> Route:
    fields: dict[str, object] = {
        "deployment": "churn-prod",
        "version": 7,
        "slot": "green",
        "upstream": "http://127.0.0.1:3001",
        "key_hashes": (deployment_key_hash("secret"),),
    }
    fields.update(overrides)
    return Route(**fields)  # type: ignore[arg-type]


def test_route_with_every_arm_field_round_trips_through_json() -> None:
    route = make_route(canary=CANARY, sticky=Sticky(header="x-user-id"))
    data = json.loads(route.to_json())
    assert data["canary"] == {
        "version": 8,
        "slot": "blue",
        "upstreams": ["http://127.0.0.1:3101"],
        "weight": 500,
    }
    assert data["sticky"] == {"header": "x-user-id"}
    assert "shadow" not in data
    assert Route.from_json(route.to_json()) == route
    shadow = make_route(
        shadow=Arm(version=9, slot="blue", upstreams=("http://h:1", "http://h:2"), weight=10000),
        sticky=Sticky(field="user_id"),
    )
    assert Route.from_json(shadow.to_json()) == shadow
    assert Route.from_json(shadow.to_json()).shadow.upstreams == ("http://h:1", "http://h:2")  # type: ignore[union-attr]


def test_route_without_arms_has_no_arm_fields_in_json() -> None:
    data = json.loads(make_route().to_json())
    assert not {"canary", "shadow", "sticky"} & data.keys()


def test_arm_fields_are_frozen() -> None:
    route = make_route(canary=CANARY)
    with pytest.raises(AttributeError):
        route.canary.weight = 10  # type: ignore[misc, union-attr]


def test_arm_identity_headers_name_version_and_arm() -> None:
    route = make_route(canary=CANARY)
    assert dict(route.ident_headers)[b"x-modelyard-arm"] == b"live"
    assert dict(route.ident_headers)[b"x-modelyard-version"] == b"7"
    assert dict(route.canary_ident_headers) == {
        b"x-modelyard-deployment": b"churn-prod",
        b"x-modelyard-version": b"8",
        b"x-modelyard-arm": b"canary",
    }


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"canary": CANARY, "shadow": CANARY}, "'canary' and 'shadow'"),
        ({"canary": Arm(8, "green", ("http://h:1",), 5)}, "'canary.slot'"),
        ({"shadow": Arm(8, "red", ("http://h:1",), 5)}, "'shadow.slot'"),  # type: ignore[arg-type]
        ({"canary": Arm(8, "blue", ("http://h:1",), 10001)}, "'canary.weight'"),
        ({"canary": Arm(8, "blue", ("http://h:1",), -1)}, "'canary.weight'"),
        ({"canary": Arm(8, "blue", ("http://h:1",), True)}, "'canary.weight'"),
        ({"shadow": Arm(8, "blue", ("http://h:1",), 2.5)}, "'shadow.weight'"),  # type: ignore[arg-type]
        ({"canary": Arm(-1, "blue", ("http://h:1",), 5)}, "'canary.version'"),
        ({"canary": Arm(True, "blue", ("http://h:1",), 5)}, "'canary.version'"),
        ({"canary": Arm(8, "blue", (), 5)}, "'canary.upstreams'"),
        ({"canary": Arm(8, "blue", ("ftp://h:1",), 5)}, "'canary.upstreams'"),
        ({"shadow": Arm(8, "blue", ("http://h:1/predict",), 5)}, "'shadow.upstreams'"),
        ({"shadow": Arm(8, "blue", ("http://h:1", "http://h:1"), 5)}, "'shadow.upstreams'"),
        ({"sticky": Sticky()}, "'sticky'"),
        ({"sticky": Sticky(header="x-a", field="b")}, "'sticky'"),
        ({"sticky": Sticky(header="X-User-Id")}, "'sticky.header'"),
        ({"sticky": Sticky(header="bad header")}, "'sticky.header'"),
        ({"sticky": Sticky(field="")}, "'sticky.field'"),
    ],
)
def test_bad_arm_fields_raise_route_error_naming_the_field(
    overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(RouteError, match=named):
        make_route(**overrides)


@pytest.mark.parametrize(
    ("raw_arm", "named"),
    [
        ("nope", "'canary' must be a JSON object"),
        ({"version": 8, "slot": "blue", "weight": 5}, "'canary' is missing upstreams"),
        ({"version": 8, "slot": "blue", "upstreams": "http://h:1", "weight": 5}, "upstreams"),
    ],
)
def test_bad_arm_json_is_refused_by_from_json(raw_arm: object, named: str) -> None:
    data = json.loads(make_route().to_json())
    data["canary"] = raw_arm
    with pytest.raises(RouteError, match=named):
        Route.from_json(json.dumps(data))


def test_bad_sticky_json_is_refused() -> None:
    data = json.loads(make_route().to_json())
    data["sticky"] = {"cookie": "x"}
    with pytest.raises(RouteError, match="'sticky'"):
        Route.from_json(json.dumps(data))


def test_publish_with_arms_is_one_transaction_and_reads_back(redis_client: redis.Redis) -> None:
    deployments = Deployments(redis_client)
    name = deployments.new_name("arms")
    route = make_route(deployment=name, canary=CANARY, sticky=Sticky(field="user_id"))
    try:
        pubsub = redis_client.pubsub()
        pubsub.subscribe("modelyard:routes:changed")
        pubsub.get_message(timeout=1)
        route_publish(redis_client, route)
        assert routes_read_all(redis_client)[name] == route
        message = pubsub.get_message(timeout=1)
        assert message is not None and message["data"] == name.encode()
        pubsub.close()
        # One bad arm leaves only that route out of the table.
        broken = json.loads(route.to_json())
        broken["canary"]["slot"] = "green"
        redis_client.hset(ROUTES_KEY, name, json.dumps(broken))
        assert name not in routes_read_all(redis_client)
    finally:
        deployments.cleanup()


def test_sticky_bucket_is_sha256_of_deployment_and_key() -> None:
    import hashlib

    digest = hashlib.sha256(b"churn-prod:user-42").digest()
    assert sticky_bucket("churn-prod", b"user-42") == int.from_bytes(digest[:8], "big") % 10_000
    # Per deployment: the same key is not in the same bucket everywhere.
    buckets = {sticky_bucket(f"d{index}", b"user-42") for index in range(20)}
    assert len(buckets) > 15


def test_sticky_field_key_takes_strings_and_numbers_only() -> None:
    assert sticky_field_key({"user_id": "u1"}, "user_id") == b"u1"
    assert sticky_field_key({"user_id": 17}, "user_id") == b"17"
    assert sticky_field_key({"user_id": 1.5}, "user_id") == b"1.5"
    for value in (None, True, [], {}, ""):
        assert sticky_field_key({"user_id": value}, "user_id") is None
    assert sticky_field_key({}, "user_id") is None


def test_arm_choose_rules() -> None:
    route = make_route(canary=CANARY)
    assert arm_choose(route, b"Canary", None) == "canary"
    assert arm_choose(route, b"live", None) == "live"
    with pytest.raises(ArmRefused, match="'shadow'"):
        arm_choose(route, b"shadow", None)
    with pytest.raises(ArmRefused, match="'canary'"):
        arm_choose(make_route(), b"canary", None)
    assert arm_choose(make_route(), b"live", None) == "live"
    # The draw is only used without a key; a key decides by its bucket.
    assert arm_choose(route, None, None, draw=lambda n: 499) == "canary"
    assert arm_choose(route, None, None, draw=lambda n: 500) == "live"
    key = next(
        f"k{i}".encode()
        for i in range(10_000)
        if sticky_bucket("churn-prod", f"k{i}".encode()) < 500
    )
    assert arm_choose(route, None, key, draw=lambda n: 9999) == "canary"
    full = make_route(canary=Arm(8, "blue", ("http://h:1",), 10_000))
    off = make_route(canary=Arm(8, "blue", ("http://h:1",), 0))
    assert arm_choose(full, None, None) == "canary"
    assert arm_choose(off, None, None) == "live"
