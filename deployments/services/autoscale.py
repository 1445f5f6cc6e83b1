"""Autoscaling the live slot's replicas on requests in flight per replica.

Like Kubernetes' HPA: desired = ceil(in flight / target), clamped to the deployment's range;
up once desired stayed above the current count for ``scale_up_seconds``, down once it stayed
below for ``scale_down_seconds`` -- to the highest count desired during that window, so a
dip in the middle of a busy period does not take capacity away. The windows' state lives in
Redis (one JSON value per deployment), so any worker can take the next decision.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import InvalidState
from deployments import backends
from deployments.choices import ACTIVE_ROLLOUT_STATES
from deployments.models import Deployment, Rollout
from deployments.runtime.base import RuntimeBackendError
from deployments.services._steps import event_record
from deployments.services.replicas import live_slot_of, slot_scale
from gateway.replica_reports import inflight_read

logger = logging.getLogger(__name__)

WINDOWS_PREFIX = "modelyard:autoscale:"


@dataclass(frozen=True)
class ScaleWindows:
    """Since when desired has been above/below the current count (unix seconds), and the
    highest count desired while below."""

    above_since: float | None = None
    below_since: float | None = None
    below_peak: int = 0


@dataclass(frozen=True)
class ScaleDecision:
    desired: int  # what the load asks for now, clamped
    scale_to: int | None  # the count to scale to now; None: stay
    windows: ScaleWindows  # the windows' state to keep for the next decision


def autoscale_decide(
    *,
    current: int,
    inflight: float,
    target_inflight: float,
    replicas_min: int,
    replicas_max: int,
    up_seconds: float,
    down_seconds: float,
    now: float,
    windows: ScaleWindows,
) -> ScaleDecision:
    """The one scaling decision (pure): what to scale to now, and the windows after it."""
    desired = min(replicas_max, max(replicas_min, math.ceil(max(inflight, 0.0) / target_inflight)))
    if current < replicas_min or current > replicas_max:
        # The range itself changed (PATCH /serving): follow it at once, no window.
        return ScaleDecision(desired, min(replicas_max, max(replicas_min, current)), ScaleWindows())
    if desired > current:
        above_since = windows.above_since if windows.above_since is not None else now
        if now - above_since >= up_seconds:
            return ScaleDecision(desired, desired, ScaleWindows())
        return ScaleDecision(desired, None, ScaleWindows(above_since=above_since))
    if desired < current:
        below_since = windows.below_since if windows.below_since is not None else now
        peak = max(desired, windows.below_peak if windows.below_since is not None else 0)
        if now - below_since >= down_seconds:
            return ScaleDecision(desired, peak, ScaleWindows())
        return ScaleDecision(desired, None, ScaleWindows(below_since=below_since, below_peak=peak))
    return ScaleDecision(desired, None, ScaleWindows())


def deployments_autoscale(*, now: float) -> list[str]:
    """One decision for every deployment that can scale; what was scaled."""
    done = []
    for deployment in Deployment.objects.exclude(live_slot="").prefetch_related("slots"):
        live = next((s for s in deployment.slots.all() if s.color == deployment.live_slot), None)
        # A fixed single replica is skipped unless its live slot still runs more (set back
        # from 2..4 to 1..1): the decision brings that down to one, or it keeps them for ever.
        if deployment.replicas_max == 1 and (live is None or len(live.replicas) <= 1):
            continue
        try:
            line = deployment_autoscale(deployment=deployment, now=now)
        except (InvalidState, RuntimeBackendError) as exc:
            logger.warning("autoscale %s: %s", deployment.name, exc)
            continue
        if line:
            done.append(line)
    return done


def deployment_autoscale(*, deployment: Deployment, now: float) -> str:
    """Decide for one deployment under its lock (a decision already running: skip this one);
    scale, and record an ``autoscaled`` event with the measured load."""
    store = backends.route_store()
    lock = store.lock(f"{WINDOWS_PREFIX}{deployment.name}:lock", timeout=300, blocking=False)
    if not lock.acquire(blocking=False):
        return ""
    try:
        if Rollout.objects.filter(deployment=deployment, state__in=ACTIVE_ROLLOUT_STATES).exists():
            return ""  # the rollout decides the slots until it switches
        slot = live_slot_of(deployment)
        current = len(slot.replicas) or 1
        loads = inflight_read(store, deployment.name)
        routed = set(slot.ready_urls)
        inflight = sum(load for upstream, load in loads.items() if upstream in routed)
        key = f"{WINDOWS_PREFIX}{deployment.name}"
        decision = autoscale_decide(
            current=current,
            inflight=inflight,
            target_inflight=deployment.scale_target_inflight,
            replicas_min=deployment.replicas_min,
            replicas_max=deployment.replicas_max,
            up_seconds=deployment.scale_up_seconds,
            down_seconds=deployment.scale_down_seconds,
            now=now,
            windows=_windows_read(store.get(key)),
        )
        store.set(key, json.dumps(asdict(decision.windows)), ex=3600)
        if decision.scale_to is None or decision.scale_to == current:
            return ""
        before = slot_scale(slot=slot, replicas=decision.scale_to)
        message = (
            f"{slot}: {before} -> {decision.scale_to} replicas; {inflight:.1f} requests in "
            f"flight ({inflight / max(before, 1):.1f} per replica, target "
            f"{deployment.scale_target_inflight:g}, desired {decision.desired})"
        )
        event_record(deployment=deployment, kind="autoscaled", slot=slot.color, message=message)
        return message
    finally:
        lock.release()


def _windows_read(raw: Any) -> ScaleWindows:
    try:
        data = json.loads(raw) if raw else {}
        return ScaleWindows(
            above_since=data.get("above_since"),
            below_since=data.get("below_since"),
            below_peak=int(data.get("below_peak", 0)),
        )
    except (ValueError, TypeError, AttributeError):
        return ScaleWindows()
