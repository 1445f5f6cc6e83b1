"""The route table contract between the rollout services (writers) and the gateway (reader).

Redis layout
------------
``modelyard:routes`` (hash)
    field = deployment name, value = one route as JSON::

        {
          "deployment": "churn-prod",          # same as the hash field
          "version": 7,                         # model version number the slot serves
          "slot": "green",                      # "blue" | "green"
          "upstream": "http://127.0.0.1:3001",  # base URL of the slot's server, no path
          "upstreams": ["http://127.0.0.1:3001", "http://127.0.0.1:3002"],
                                                # every READY replica of the slot (>= 1 when
                                                # live); "upstream" is upstreams[0], kept for
                                                # readers that know one server per slot
          "key_hashes": ["<sha256 hex>", ...],  # deployment_key_hash() of every valid key
          "state": "live",                      # "live" | "draining" | "none"
          "updated_at": "2026-11-23T14:00:00+00:00"
        }

``modelyard:routes:changed`` (pub/sub channel)
    message = the deployment name whose field changed (or was removed).

Meaning of ``state`` for the gateway:

- ``live``: requests are forwarded to one of ``upstreams`` (a replica that is not ready is never
  listed, so it never gets traffic).
- ``draining``: the deployment is being stopped; new requests get 503 + ``Retry-After``, requests
  already in flight finish on the upstream they started on.
- ``none``: no slot is live (first rollout still starting, or all slots failed); 503 too.

Writers call :func:`route_publish` / :func:`route_remove`; the HSET/HDEL and the PUBLISH go in
one MULTI so a gateway that hears the message always reads the new value. A gateway that misses
a message (its subscription was reconnecting) still converges: it re-reads the whole hash every
few seconds. Deployment keys are never stored, only their sha256 (:func:`deployment_key_hash`).

Always remove with :func:`route_remove` (announced): a gateway that re-reads an EMPTY hash
while it holds routes assumes Redis lost its data and keeps serving what it has. After Redis
loses its data (restart without persistence) the rollout side must publish every route again
(its reconciliation sweep); until then gateways serve from memory and new replicas serve nothing.

Deployment names must match :data:`DEPLOYMENT_NAME_RE`: they are URL path segments and parts of
``:``-separated Redis keys (``gateway.metrics``).

This module needs nothing but redis-py, so the Django side imports it without the gateway's
dependencies; the sync functions take a ``redis.Redis``, the ``*_async`` ones a
``redis.asyncio.Redis``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger(__name__)

ROUTES_KEY = "modelyard:routes"
ROUTES_CHANNEL = "modelyard:routes:changed"

SLOTS = ("blue", "green")
STATES = ("live", "draining", "none")

# Names become URL path segments (/d/<name>/...) and parts of Redis keys (":"-separated), so
# they are restricted to characters that need no escaping in either.
DEPLOYMENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")

Slot = Literal["blue", "green"]
State = Literal["live", "draining", "none"]


class RouteError(ValueError):
    """A route value that breaks the contract above; the message names the field."""


def deployment_key_hash(key: str) -> str:
    """Return the sha256 hex digest under which a deployment key is stored in a route."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Route:
    """One deployment's entry in the route table (immutable: the gateway swaps whole values)."""

    deployment: str
    version: int
    slot: Slot
    upstream: str
    key_hashes: tuple[str, ...]
    state: State = "live"
    updated_at: str = field(default_factory=_now_iso)
    # Every ready replica's base URL; () means (upstream,). Normalised in __post_init__ so
    # readers always see the full list with ``upstream`` first.
    upstreams: tuple[str, ...] = ()
    # The identity headers the gateway adds to every answer, encoded once per route change
    # instead of once per request.
    ident_headers: tuple[tuple[bytes, bytes], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        if not self.upstreams:
            object.__setattr__(self, "upstreams", (self.upstream,))
        elif not isinstance(self.upstreams, tuple | list):
            raise RouteError(f"route field 'upstreams' must be a list, got {self.upstreams!r}")
        elif self.upstream != self.upstreams[0]:
            # upstream is upstreams[0] by definition: a writer that set both differently broke
            # the contract, one that set only the list gets its first entry.
            if self.upstream:
                raise RouteError(
                    f"route field 'upstream' must be upstreams[0], got {self.upstream!r} "
                    f"and {list(self.upstreams)!r}"
                )
            object.__setattr__(self, "upstream", self.upstreams[0])
        object.__setattr__(self, "upstreams", tuple(self.upstreams))
        validate_route(self)
        object.__setattr__(
            self,
            "ident_headers",
            (
                (b"x-modelyard-deployment", self.deployment.encode()),
                (b"x-modelyard-version", str(self.version).encode()),
            ),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "deployment": self.deployment,
                "version": self.version,
                "slot": self.slot,
                "upstream": self.upstream,
                "upstreams": list(self.upstreams),
                "key_hashes": list(self.key_hashes),
                "state": self.state,
                "updated_at": self.updated_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Route:
        """Parse one hash value; raise :class:`RouteError` naming what is wrong."""
        try:
            data: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RouteError(f"route is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RouteError(f"route must be a JSON object, got {type(data).__name__}")
        missing = {"deployment", "version", "slot", "upstream", "key_hashes"} - data.keys()
        if missing:
            raise RouteError(f"route is missing field(s): {', '.join(sorted(missing))}")
        key_hashes = data["key_hashes"]
        if not isinstance(key_hashes, list):
            raise RouteError("route field 'key_hashes' must be a list of sha256 hex strings")
        upstreams = data.get("upstreams") or [data["upstream"]]
        if not isinstance(upstreams, list):
            raise RouteError("route field 'upstreams' must be a list of base URLs")
        return cls(
            deployment=data["deployment"],
            version=data["version"],
            slot=data["slot"],
            upstream=data["upstream"],
            upstreams=tuple(upstreams),
            key_hashes=tuple(key_hashes),
            state=data.get("state", "live"),
            updated_at=data.get("updated_at") or "",
        )


def validate_route(route: Route) -> None:
    """Raise :class:`RouteError` if any field breaks the contract."""
    if not isinstance(route.deployment, str) or not DEPLOYMENT_NAME_RE.match(route.deployment):
        raise RouteError(
            f"route field 'deployment' must match {DEPLOYMENT_NAME_RE.pattern}, "
            f"got {route.deployment!r}"
        )
    # bool is an int subclass; a JSON true must not pass as version 1.
    if isinstance(route.version, bool) or not isinstance(route.version, int) or route.version < 0:
        raise RouteError(f"route field 'version' must be an integer >= 0, got {route.version!r}")
    if route.slot not in SLOTS:
        raise RouteError(f"route field 'slot' must be one of {SLOTS}, got {route.slot!r}")
    if route.state not in STATES:
        raise RouteError(f"route field 'state' must be one of {STATES}, got {route.state!r}")
    for upstream in route.upstreams:
        _validate_upstream(upstream)
    if len(set(route.upstreams)) != len(route.upstreams):
        raise RouteError(
            f"route field 'upstreams' lists a replica twice: {list(route.upstreams)!r}"
        )
    for key_hash in route.key_hashes:
        if not isinstance(key_hash, str) or not _SHA256_HEX_RE.match(key_hash):
            raise RouteError(
                "route field 'key_hashes' must hold lowercase sha256 hex digests "
                f"(deployment_key_hash(key)), got {key_hash!r}"
            )
    if not isinstance(route.updated_at, str):
        raise RouteError(f"route field 'updated_at' must be a string, got {route.updated_at!r}")


def _validate_upstream(upstream: object) -> None:
    if not isinstance(upstream, str):
        raise RouteError(f"route field 'upstream(s)' must be a string, got {upstream!r}")
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RouteError(
            f"route field 'upstream(s)' must be an http(s) URL with a host, got {upstream!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RouteError(
            f"route field 'upstream(s)' must be a base URL without path or query, got {upstream!r}"
        )


def routes_parse_all(raw: dict[bytes | str, bytes | str]) -> dict[str, Route]:
    """Parse a whole ``HGETALL``; entries that break the contract are logged and left out.

    One bad entry must not take every other deployment off the gateway.
    """
    routes: dict[str, Route] = {}
    for name, value in raw.items():
        deployment = name.decode() if isinstance(name, bytes) else name
        try:
            route = Route.from_json(value)
        except RouteError as exc:
            logger.error("ignoring route %r in %s: %s", deployment, ROUTES_KEY, exc)
            continue
        if route.deployment != deployment:
            logger.error(
                "ignoring route %r in %s: its 'deployment' field says %r",
                deployment,
                ROUTES_KEY,
                route.deployment,
            )
            continue
        routes[deployment] = route
    return routes


def route_parse_one(deployment: str, raw: bytes | str | None) -> Route | None:
    """Parse one ``HGET`` answer; ``None`` when absent or invalid (invalid ones are logged)."""
    if raw is None:
        return None
    return routes_parse_all({deployment: raw}).get(deployment)


def route_publish(client: redis.Redis, route: Route) -> None:
    """Store ``route`` and announce it, atomically (HSET + PUBLISH in one MULTI/EXEC)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(ROUTES_KEY, route.deployment, route.to_json())
        pipe.publish(ROUTES_CHANNEL, route.deployment)
        pipe.execute()


def route_remove(client: redis.Redis, deployment: str) -> None:
    """Delete a deployment's route and announce it; the gateway then answers 404 for it."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(ROUTES_KEY, deployment)
        pipe.publish(ROUTES_CHANNEL, deployment)
        pipe.execute()


def routes_read_all(client: redis.Redis) -> dict[str, Route]:
    """Return every valid route, keyed by deployment name."""
    return routes_parse_all(client.hgetall(ROUTES_KEY))


async def routes_read_all_async(client: redis.asyncio.Redis) -> dict[str, Route]:
    """Async twin of :func:`routes_read_all`, for the gateway."""
    return routes_parse_all(await client.hgetall(ROUTES_KEY))


async def route_read_async(client: redis.asyncio.Redis, deployment: str) -> Route | None:
    """Return one deployment's route, or ``None`` when it has none (or an invalid one)."""
    return route_parse_one(deployment, await client.hget(ROUTES_KEY, deployment))
