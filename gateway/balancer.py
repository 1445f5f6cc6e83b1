"""Which replica of a deployment gets a request, and which replicas are left out for now.

A live route lists every ready replica of its slot (``Route.upstreams``). Per deployment, this
module keeps one :class:`Replica` per listed URL with the requests this gateway has outstanding
on it, and sends each request to the replica with the fewest (least outstanding requests; ties
go round robin, so a quiet deployment still spreads its requests evenly).

A replica that refused, reset or dropped a connection (the gateway's caller decides what
counts, see ``gateway.app``) is *ejected*: skipped by :meth:`ReplicaSet.choose` until either

- a probe says it answers again: ``GET /readyz`` on a fresh connection after
  ``eject_probe_initial_s``, then at doubling intervals up to ``eject_probe_max_s``, or
- the route is republished (the platform restarted or replaced replicas: every replica the new
  route lists starts afresh, and one it no longer lists is forgotten).

Why by hand: the choice is a dozen lines on counters the gateway keeps anyway (the in-flight
reports need them too), and the HTTP libraries' balancers (aiohttp, httpx) have none.

Arms (progressive delivery, ``gateway.arms``): a route's canary and shadow slots get replica
sets of their own, kept the same way, so a canary request is balanced, ejected and retried
among the canary's replicas only. Shadow replicas are chosen the same way but never ejected:
their failures are what the shadow comparison counts (``gateway.shadow``).

In-flight accounting: every :meth:`Replica.begin` / :meth:`Replica.end` adds the time spent
at the previous count to an integral, so :meth:`Replica.interval_load` returns the exact mean
(and the peak) of requests in flight over the interval since the last call -- what
``gateway.replica_reports`` sends the autoscaler and ``/metrics`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from gateway.routes import Route
from gateway.upstream import Upstream, UpstreamPool

logger = logging.getLogger("modelyard.gateway")

ARMS = ("live", "canary", "shadow")

READINESS_PATH = b"/readyz"


class Replica:
    """One replica of one deployment, as this gateway sees it."""

    __slots__ = (
        "_area",
        "_interval_start",
        "_peak",
        "_since",
        "deployment",
        "ejected",
        "outstanding",
        "probe_task",
        "upstream",
        "url",
    )

    def __init__(self, deployment: str, url: str) -> None:
        self.deployment = deployment
        self.url = url
        self.upstream = Upstream.parse(url)
        self.outstanding = 0
        self.ejected = False
        self.probe_task: asyncio.Task[None] | None = None
        now = time.monotonic()
        self._area = 0.0  # request-seconds in flight since _interval_start
        self._since = now  # when outstanding last changed
        self._interval_start = now
        self._peak = 0

    def begin(self) -> None:
        now = time.monotonic()
        self._area += self.outstanding * (now - self._since)
        self._since = now
        self.outstanding += 1
        if self.outstanding > self._peak:
            self._peak = self.outstanding

    def end(self) -> None:
        now = time.monotonic()
        self._area += self.outstanding * (now - self._since)
        self._since = now
        self.outstanding -= 1

    def interval_load(self) -> tuple[float, int]:
        """Mean and peak requests in flight since the previous call; starts the next interval."""
        now = time.monotonic()
        area = self._area + self.outstanding * (now - self._since)
        elapsed = now - self._interval_start
        mean = area / elapsed if elapsed > 0 else float(self.outstanding)
        peak = self._peak
        self._area, self._since, self._interval_start = 0.0, now, now
        self._peak = self.outstanding
        return mean, peak


def arm_upstreams(route: Route, arm: str) -> tuple[str, ...]:
    """The replicas an arm of ``route`` lists (() when the route has no such arm)."""
    if arm == "live":
        return route.upstreams
    part = route.canary if arm == "canary" else route.shadow
    return () if part is None else part.upstreams


class ReplicaSet:
    """The replicas of one arm (live by default) of a deployment's route, in the route's order."""

    __slots__ = ("_turn", "arm", "deployment", "replicas", "route")

    def __init__(
        self,
        route: Route,
        previous: ReplicaSet | None = None,
        *,
        readmit: bool = False,
        arm: str = "live",
    ) -> None:
        self.deployment = route.deployment
        self.route = route
        self.arm = arm
        # Replicas both routes list keep their object (counters, ejection): requests in flight
        # end on the same counter they began on.
        kept = {} if previous is None else previous.by_url()
        self.replicas = tuple(
            (_readmitted(kept[url]) if readmit else kept[url])
            if url in kept
            else Replica(route.deployment, url)
            for url in arm_upstreams(route, arm)
        )
        self._turn: int = 0 if previous is None else previous._turn

    def by_url(self) -> dict[str, Replica]:
        return {replica.url: replica for replica in self.replicas}

    def choose(self, tried: Iterable[Replica] = ()) -> Replica | None:
        """The ready replica with the fewest outstanding requests, ``None`` when none is left.

        ``tried`` (the replicas that already failed this request) and ejected ones are skipped.
        """
        replicas = self.replicas
        count = len(replicas)
        if count == 1:  # the common case: no scan, no turn
            only = replicas[0]
            return None if only.ejected or only in tried else only
        start = self._turn = (self._turn + 1) % count
        best: Replica | None = None
        for offset in range(count):
            replica = replicas[(start + offset) % count]
            if replica.ejected or replica in tried:
                continue
            if best is None or replica.outstanding < best.outstanding:
                best = replica
        return best


def _readmitted(replica: Replica) -> Replica:
    """A replica the republished route lists again starts un-ejected (its probe stops)."""
    if replica.ejected:
        replica.ejected = False
        if replica.probe_task is not None:
            replica.probe_task.cancel()
            replica.probe_task = None
    return replica


class Balancer:
    """Every deployment's :class:`ReplicaSet`, kept in step with the route table."""

    def __init__(
        self,
        *,
        probe_initial_s: float,
        probe_max_s: float,
        probe_timeout_s: float,
        on_probe_failed: Callable[[Replica], None],
    ) -> None:
        self.probe_initial_s = probe_initial_s
        self.probe_max_s = probe_max_s
        self.probe_timeout_s = probe_timeout_s
        # Called after each failed probe (the repair request, rate-limited by its sender).
        self._on_probe_failed = on_probe_failed
        # The live arm's sets (``sets``, what /metrics and the reports read first) and the
        # canary's and shadow's, each keyed by deployment.
        self.sets: dict[str, ReplicaSet] = {}
        self.arm_sets: dict[str, dict[str, ReplicaSet]] = {
            "live": self.sets,
            "canary": {},
            "shadow": {},
        }
        self._pool: UpstreamPool | None = None

    def start(self, pool: UpstreamPool) -> None:
        self._pool = pool

    def replica_set(self, route: Route, arm: str = "live") -> ReplicaSet:
        """The replicas of ``route``'s ``arm`` (the route a request read at its start)."""
        current = self.arm_sets[arm].get(route.deployment)
        if current is not None and (current.route is route or current.route == route):
            return current
        # The request read its route before the table changed: a set of its own, sharing the
        # replicas both routes list, so it finishes on the slot it started on.
        return ReplicaSet(route, current, arm=arm)

    def routes_changed(self, routes: dict[str, Route]) -> None:
        """Follow a new route table (call on every swap): build, rebuild or forget sets."""
        for arm, sets in self.arm_sets.items():
            having = (
                routes
                if arm == "live"
                else {name: route for name, route in routes.items() if arm_upstreams(route, arm)}
            )
            self._follow(sets, having, arm)

    def _follow(self, sets: dict[str, ReplicaSet], routes: dict[str, Route], arm: str) -> None:
        for deployment in sets.keys() - routes.keys():
            self._forget(sets.pop(deployment).replicas)
        for deployment, route in routes.items():
            current = sets.get(deployment)
            if current is None:
                sets[deployment] = ReplicaSet(route, arm=arm)
            elif current.route is route:
                continue
            elif current.route == route:
                current.route = route  # a periodic re-read: same content, keep ejections
            else:
                # Republished (its updated_at differs): every replica it lists starts afresh.
                sets[deployment] = ReplicaSet(route, current, readmit=True, arm=arm)
                listed = set(arm_upstreams(route, arm))
                self._forget(r for r in current.replicas if r.url not in listed)

    def _forget(self, replicas: Iterable[Replica]) -> None:
        for replica in replicas:
            if replica.probe_task is not None:
                replica.probe_task.cancel()
                replica.probe_task = None

    def eject(self, replica: Replica) -> bool:
        """Leave ``replica`` out until a probe or a republished route brings it back.

        Returns whether it was in traffic until now (the first failure ejects; later ones of
        requests that were already in flight change nothing).
        """
        if replica.ejected:
            return False
        replica.ejected = True
        # A replica only an outdated route lists is never chosen again: no probe for it.
        listed = any(
            replica in current.replicas
            for sets in self.arm_sets.values()
            if (current := sets.get(replica.deployment)) is not None
        )
        if self._pool is not None and listed:
            replica.probe_task = asyncio.create_task(
                self._probe_until_ready(replica), name=f"gateway-probe-{replica.url}"
            )
        return True

    async def _probe_until_ready(self, replica: Replica) -> None:
        assert self._pool is not None
        wait = self.probe_initial_s
        while replica.ejected:
            await asyncio.sleep(wait)
            if not replica.ejected:
                return
            if await self._pool.probe(replica.upstream, READINESS_PATH, self.probe_timeout_s):
                replica.ejected = False
                replica.probe_task = None
                logger.warning(
                    "replica %s of %r answers again; back in traffic",
                    replica.url,
                    replica.deployment,
                )
                return
            self._on_probe_failed(replica)
            wait = min(wait * 2, self.probe_max_s)

    def loads(self, deployment: str) -> dict[str, tuple[float, int]]:
        """Mean and peak in flight per replica URL of ``deployment`` since the last call,
        every arm's replicas (the autoscaler scales the canary's and shadow's slots too)."""
        loads: dict[str, tuple[float, int]] = {}
        for sets in self.arm_sets.values():
            replicas = sets.get(deployment)
            if replicas is not None:
                loads.update((r.url, r.interval_load()) for r in replicas.replicas)
        return loads

    def all_sets(self) -> list[ReplicaSet]:
        return [replicas for sets in self.arm_sets.values() for replicas in sets.values()]

    async def close(self) -> None:
        tasks = [r.probe_task for s in self.all_sets() for r in s.replicas if r.probe_task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
