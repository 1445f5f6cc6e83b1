"""The replica choice and the in-flight integral, on the balancer's own objects (no I/O)."""

from __future__ import annotations

import time
from collections import Counter

from gateway.balancer import Balancer, Replica, ReplicaSet
from gateway.routes import Route

URLS = ("http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003")


def route(*urls: str, updated_at: str = "2026-12-02T00:00:00+00:00") -> Route:
    return Route(
        deployment="d",
        version=1,
        slot="blue",
        upstream=urls[0],
        upstreams=urls,
        key_hashes=(),
        updated_at=updated_at,
    )


def balancer() -> Balancer:
    return Balancer(
        probe_initial_s=0.1, probe_max_s=0.5, probe_timeout_s=1, on_probe_failed=lambda r: None
    )


def test_ties_go_round_robin_and_the_least_busy_replica_wins() -> None:
    replicas = ReplicaSet(route(*URLS))
    assert Counter(replicas.choose().url for _ in range(300)) == {url: 100 for url in URLS}  # type: ignore[union-attr]
    busy = replicas.replicas[0]
    busy.begin()
    assert {replicas.choose().url for _ in range(30)} == set(URLS[1:])  # type: ignore[union-attr]


def test_ejected_and_tried_replicas_are_skipped_until_none_is_left() -> None:
    lb = balancer()
    lb.routes_changed({"d": route(*URLS[:2])})
    replicas = lb.sets["d"]
    first, second = replicas.replicas
    assert lb.eject(first) is True
    assert lb.eject(first) is False  # already out
    assert {replicas.choose().url for _ in range(10)} == {second.url}  # type: ignore[union-attr]
    assert replicas.choose(tried=[second]) is None


def test_a_republished_route_readmits_its_replicas_and_a_reread_does_not() -> None:
    lb = balancer()
    lb.routes_changed({"d": route(*URLS[:2])})
    first = lb.sets["d"].replicas[0]
    lb.eject(first)
    lb.routes_changed({"d": route(*URLS[:2])})  # periodic re-read: equal content
    assert lb.sets["d"].replicas[0] is first and first.ejected
    lb.routes_changed({"d": route(*URLS[:2], updated_at="2026-12-02T00:00:05+00:00")})
    assert lb.sets["d"].replicas[0] is first and not first.ejected
    lb.routes_changed({})
    assert lb.sets == {}


def test_interval_load_is_the_time_weighted_mean_and_the_peak() -> None:
    replica = Replica("d", URLS[0])
    replica.interval_load()
    replica.begin()
    replica.begin()
    time.sleep(0.05)
    replica.end()
    time.sleep(0.05)
    mean, peak = replica.interval_load()
    # 2 in flight for half the interval, then 1: a mean of 1.5, a peak of 2.
    assert 1.35 <= mean <= 1.65
    assert peak == 2
    time.sleep(0.02)
    assert replica.interval_load() == (1.0, 1)  # the next interval starts where this one ended
