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
          "updated_at": "2026-11-23T14:00:00+00:00",
          # optional, progressive delivery (absent = the one live arm above):
          "canary": {"version": 8, "slot": "blue", "upstreams": ["http://..."], "weight": 500},
          "shadow": {"version": 8, "slot": "blue", "upstreams": ["http://..."], "weight": 10000},
          "sticky": {"header": "x-user-id"}     # or {"field": "user_id"}
        }

``version``/``slot``/``upstreams`` are the LIVE arm. ``weight`` is in basis points (0..10000):
for ``canary`` the share of requests the canary answers, for ``shadow`` the share of live
requests mirrored to it (answers compared, then discarded; see ``gateway.shadow``). A route has
at most one of the two: there are two slots, and either runs in the one live does not use.
``sticky`` makes the canary assignment a function of a request key (a header, or a top-level
field of the JSON body) instead of a random draw; see ``gateway.arms``.

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
from dataclasses import dataclass, field, replace
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


# Header names are HTTP tokens; ASGI hands them over lowercased, so they are stored that way.
_HEADER_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]{1,128}$")
_FIELD_NAME_RE = re.compile(r"^.{1,128}$", re.DOTALL)
MAX_WEIGHT = 10_000  # basis points


class RouteError(ValueError):
    """A route value that breaks the contract above; the message names the field."""


def deployment_key_hash(key: str) -> str:
    """Return the sha256 hex digest under which a deployment key is stored in a route."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Arm:
    """A second slot taking part in a route: a weighted canary or a mirrored shadow."""

    version: int
    slot: Slot
    upstreams: tuple[str, ...]
    weight: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "slot": self.slot,
            "upstreams": list(self.upstreams),
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, name: str, data: Any) -> Arm:
        if not isinstance(data, dict):
            raise RouteError(f"route field {name!r} must be a JSON object, got {data!r}")
        missing = {"version", "slot", "upstreams", "weight"} - data.keys()
        if missing:
            raise RouteError(f"route field {name!r} is missing {', '.join(sorted(missing))}")
        upstreams = data["upstreams"]
        if not isinstance(upstreams, list):
            raise RouteError(f"route field '{name}.upstreams' must be a list of base URLs")
        return cls(
            version=data["version"],
            slot=data["slot"],
            upstreams=tuple(upstreams),
            weight=data["weight"],
        )


@dataclass(frozen=True, slots=True)
class Sticky:
    """Where the request key for sticky assignment comes from: one header or one body field."""

    header: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {"header": self.header} if self.header is not None else {"field": self.field or ""}

    @classmethod
    def from_dict(cls, data: Any) -> Sticky:
        if not isinstance(data, dict) or set(data) not in ({"header"}, {"field"}):
            raise RouteError(
                'route field \'sticky\' must be {"header": <name>} or {"field": <name>}, '
                f"got {data!r}"
            )
        return cls(header=data.get("header"), field=data.get("field"))


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
    canary: Arm | None = None
    shadow: Arm | None = None
    sticky: Sticky | None = None
    # The identity headers the gateway adds to every answer, encoded once per route change
    # instead of once per request: the live arm's, and the canary's (() without one).
    ident_headers: tuple[tuple[bytes, bytes], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    canary_ident_headers: tuple[tuple[bytes, bytes], ...] = field(
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
        for name in ("canary", "shadow"):
            arm = getattr(self, name)
            if isinstance(arm, Arm) and not isinstance(arm.upstreams, tuple):
                if not isinstance(arm.upstreams, list):
                    raise RouteError(f"route field '{name}.upstreams' must be a list")
                object.__setattr__(self, name, replace(arm, upstreams=tuple(arm.upstreams)))
        validate_route(self)
        object.__setattr__(self, "ident_headers", _ident(self.deployment, self.version, b"live"))
        if self.canary is not None:
            object.__setattr__(
                self,
                "canary_ident_headers",
                _ident(self.deployment, self.canary.version, b"canary"),
            )

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "deployment": self.deployment,
            "version": self.version,
            "slot": self.slot,
            "upstream": self.upstream,
            "upstreams": list(self.upstreams),
            "key_hashes": list(self.key_hashes),
            "state": self.state,
            "updated_at": self.updated_at,
        }
        # Absent rather than null: a route without arms reads exactly as before.
        if self.canary is not None:
            data["canary"] = self.canary.to_dict()
        if self.shadow is not None:
            data["shadow"] = self.shadow.to_dict()
        if self.sticky is not None:
            data["sticky"] = self.sticky.to_dict()
        return json.dumps(data, separators=(",", ":"))

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
            canary=Arm.from_dict("canary", data["canary"]) if "canary" in data else None,
            shadow=Arm.from_dict("shadow", data["shadow"]) if "shadow" in data else None,
            sticky=Sticky.from_dict(data["sticky"]) if "sticky" in data else None,
        )


def _ident(deployment: str, version: int, arm: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"x-modelyard-deployment", deployment.encode()),
        (b"x-modelyard-version", str(version).encode()),
        (b"x-modelyard-arm", arm),
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
    if route.canary is not None and route.shadow is not None:
        raise RouteError(
            "route fields 'canary' and 'shadow' exclude each other: both would need the one "
            "slot live does not use"
        )
    for name in ("canary", "shadow"):
        arm = getattr(route, name)
        if arm is not None:
            _validate_arm(name, arm, route.slot)
    if route.sticky is not None:
        _validate_sticky(route.sticky)


def _validate_arm(name: str, arm: object, live_slot: str) -> None:
    if not isinstance(arm, Arm):
        raise RouteError(f"route field {name!r} must be an Arm, got {arm!r}")
    if isinstance(arm.version, bool) or not isinstance(arm.version, int) or arm.version < 0:
        raise RouteError(
            f"route field '{name}.version' must be an integer >= 0, got {arm.version!r}"
        )
    if arm.slot not in SLOTS:
        raise RouteError(f"route field '{name}.slot' must be one of {SLOTS}, got {arm.slot!r}")
    if arm.slot == live_slot:
        raise RouteError(
            f"route field '{name}.slot' must be the slot live does not use, got {arm.slot!r} "
            "(the live slot)"
        )
    if (
        isinstance(arm.weight, bool)
        or not isinstance(arm.weight, int)
        or not 0 <= arm.weight <= MAX_WEIGHT
    ):
        raise RouteError(
            f"route field '{name}.weight' must be an integer of basis points in 0..{MAX_WEIGHT}, "
            f"got {arm.weight!r}"
        )
    if not arm.upstreams:
        raise RouteError(f"route field '{name}.upstreams' must list at least one base URL")
    for upstream in arm.upstreams:
        _validate_upstream(upstream, f"{name}.upstreams")
    if len(set(arm.upstreams)) != len(arm.upstreams):
        raise RouteError(
            f"route field '{name}.upstreams' lists a replica twice: {list(arm.upstreams)!r}"
        )


def _validate_sticky(sticky: object) -> None:
    if not isinstance(sticky, Sticky) or (sticky.header is None) == (sticky.field is None):
        raise RouteError(f"route field 'sticky' must name one header or one field, got {sticky!r}")
    if sticky.header is not None and (
        not isinstance(sticky.header, str) or not _HEADER_NAME_RE.match(sticky.header)
    ):
        raise RouteError(
            f"route field 'sticky.header' must be a lowercase HTTP header name, "
            f"got {sticky.header!r}"
        )
    if sticky.field is not None and (
        not isinstance(sticky.field, str) or not _FIELD_NAME_RE.match(sticky.field)
    ):
        raise RouteError(
            f"route field 'sticky.field' must be a field name of 1-128 characters, "
            f"got {sticky.field!r}"
        )


def _validate_upstream(upstream: object, name: str = "upstream(s)") -> None:
    if not isinstance(upstream, str):
        raise RouteError(f"route field '{name}' must be a string, got {upstream!r}")
    try:
        parts = urlsplit(upstream)
        hostname = parts.hostname
    except ValueError:  # a bad port or bracket: urlsplit refuses it
        parts, hostname = None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        raise RouteError(
            f"route field '{name}' must be an http(s) URL with a host, got {upstream!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RouteError(
            f"route field '{name}' must be a base URL without path or query, got {upstream!r}"
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
