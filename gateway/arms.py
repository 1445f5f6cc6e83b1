"""Which arm of a route answers a request: live, or the weighted canary (issue 19).

A route may carry a ``canary`` (``gateway.routes``) with a weight in basis points. Per request:

1. ``X-Modelyard-Arm: live|canary`` forces an arm (for testing a named arm); any other value,
   or ``canary`` on a route without one, is refused with 400 ``invalid_arm`` naming it.
2. With ``sticky`` set and its key present (the header, or a top-level field of the JSON
   body), the arm is a pure function of ``sha256(deployment + ":" + key)``: the first 8 bytes
   as an unsigned integer, mod 10,000, below the canary weight -> canary. No seed, no state:
   every gateway process, before and after a restart, puts a key in the same arm, and raising
   the weight only moves keys from live to canary (a key in the canary at 5 % stays there at
   25 %).
3. Otherwise a random draw at the canary weight.

The assignment is per deployment: the same key can land in different arms of two deployments,
so one unlucky user is not the canary of every rollout.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from gateway.routes import MAX_WEIGHT, Route

ARM_LIVE = "live"
ARM_CANARY = "canary"
ANSWERING_ARMS = (ARM_LIVE, ARM_CANARY)
ARM_HEADER = b"x-modelyard-arm"


class ArmRefused(ValueError):
    """The request names an arm this route cannot answer with (the caller answers 400)."""

    def __init__(self, arm: str, available: tuple[str, ...]) -> None:
        super().__init__(
            f"X-Modelyard-Arm: {arm!r} is not an arm of this deployment; "
            f"use one of {', '.join(available)}"
        )
        self.arm = arm
        self.available = available


def sticky_bucket(deployment: str, key: bytes) -> int:
    """The key's bucket in 0..9999 for ``deployment`` (stable across processes and restarts)."""
    digest = hashlib.sha256(deployment.encode() + b":" + key).digest()
    return int.from_bytes(digest[:8], "big") % MAX_WEIGHT


def sticky_field_key(payload: dict[str, Any], field: str) -> bytes | None:
    """The body field's value as a key: strings as they are, numbers as JSON; else none."""
    value = payload.get(field)
    if isinstance(value, str):
        return value.encode() if value else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value).encode()
    return None  # absent, null, a list or object: no key, a random draw


def arm_choose(
    route: Route,
    forced: bytes | None,
    sticky_key: bytes | None,
    draw: Any = random.randrange,
) -> str:
    """The arm that answers: see the module docstring for the order of the rules."""
    canary = route.canary
    if forced is not None:
        arm = forced.decode("latin-1").strip().lower()
        available = ANSWERING_ARMS if canary is not None else (ARM_LIVE,)
        if arm not in available:
            raise ArmRefused(arm, available)
        return arm
    if canary is None or canary.weight == 0:
        return ARM_LIVE
    if canary.weight >= MAX_WEIGHT:
        return ARM_CANARY
    bucket = (
        sticky_bucket(route.deployment, sticky_key) if sticky_key is not None else draw(MAX_WEIGHT)
    )
    return ARM_CANARY if bucket < canary.weight else ARM_LIVE
