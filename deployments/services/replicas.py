"""A slot's replicas: which of them take traffic, scaling their number, repairing a dead one.

The backend knows the servers; ``Slot.replicas`` records what it last said of them, and the
route lists the ready ones (``route_of``). Every change of a replica's readiness goes
through :func:`slot_replicas_sync`, which republishes the route when the live slot's ready
set changed: one path whether a replica started, died, was repaired or scaled away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction

from core.errors import InvalidState
from deployments import backends
from deployments.choices import SlotState
from deployments.models import Deployment, Slot
from deployments.runtime.base import RuntimeBackendError, SlotNotFound, SlotStatus
from deployments.services._steps import event_record
from deployments.services.routes import route_sync
from gateway.replica_reports import inflight_read

logger = logging.getLogger(__name__)

# How long a replica that left the route may still get requests (the gateway's pub/sub lag
# plus a request that was already being forwarded), and at most how long scaling down waits
# for the gateway's in-flight reports of it to reach zero before the graceful stop.
DRAIN_GRACE_SECONDS = 0.5
DRAIN_TIMEOUT_SECONDS = 30.0


def replicas_recorded(status: SlotStatus, *, draining: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``Slot.replicas`` as the backend reports them; ``draining`` URLs marked so (no traffic)."""
    leaving = set(draining)
    if not status.replicas:
        return [{"index": 0, "url": status.url, "state": "ready" if status.ready else "dead"}]
    return [
        {
            "index": replica.index,
            "url": replica.url,
            "state": "draining" if replica.url in leaving else replica.state,
        }
        for replica in status.replicas
    ]


def slot_replicas_sync(
    *, slot_id: int, status: SlotStatus | None = None, draining: Iterable[str] = ()
) -> bool:
    """Record the slot's replicas as the backend sees them (or as ``status`` says); republish
    the route if the slot is live and its ready replicas changed. Returns whether anything did.

    Only a slot in ``ready`` state is synced: a starting slot's record belongs to its rollout.
    """
    slot = Slot.objects.select_related("deployment").get(pk=slot_id)
    if status is None:
        try:
            status = backends.runtime_backend().slot_status(slot_key=slot.runtime_key)
        except SlotNotFound:
            return False
    wanted = replicas_recorded(status, draining=draining)
    with transaction.atomic():
        # The deployment's row lock, as route_sync takes it: a switch or rollback in flight
        # commits first, and the route published here is the committed one.
        deployment = Deployment.objects.select_for_update().get(pk=slot.deployment_id)
        slot = Slot.objects.select_for_update().get(pk=slot_id)
        if slot.state != SlotState.READY or slot.replicas == wanted:
            return False
        ready = [replica["url"] for replica in wanted if replica["state"] == "ready"]
        Slot.objects.filter(pk=slot.pk).update(replicas=wanted, url=ready[0] if ready else slot.url)
        if deployment.live_slot == slot.color:
            route_sync(deployment_id=deployment.pk)
    return True


def live_slot_of(deployment: Deployment) -> Slot:
    if not deployment.live_slot:
        raise InvalidState(f"deployment {deployment.name} has no live slot")
    slot = Slot.objects.select_related("deployment").get(
        deployment=deployment, color=deployment.live_slot
    )
    if slot.state != SlotState.READY:
        raise InvalidState(f"{slot} is {slot.state}, not ready")
    return slot


def slot_scale(*, slot: Slot, replicas: int) -> int:
    """Run ``replicas`` servers in ``slot``; returns how many it ran before.

    Up: the new servers start and join the route only once ready (the backend returns when
    they are). Down: the leaving ones are dropped from the route first, the gateway's
    in-flight reports of them are awaited (``DRAIN_TIMEOUT_SECONDS`` at most), then they
    are stopped gracefully -- no request is sent to a server that is going away.
    """
    backend = backends.runtime_backend()
    status = backend.slot_status(slot_key=slot.runtime_key)
    current = len(status.replicas) or 1
    if replicas == current:
        return current
    if replicas < current:
        leaving = [replica.url for replica in status.replicas if replica.index >= replicas]
        slot_replicas_sync(slot_id=slot.pk, status=status, draining=leaving)
        _drain(slot.deployment.name, leaving)
    backend.slot_scale(slot_key=slot.runtime_key, replicas=replicas, timeout=DRAIN_TIMEOUT_SECONDS)
    slot_replicas_sync(slot_id=slot.pk)
    return current


def _drain(deployment: str, upstreams: list[str]) -> None:
    """Wait until the gateways report nothing in flight on ``upstreams`` (or the timeout)."""
    time.sleep(DRAIN_GRACE_SECONDS)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    store = backends.route_store()
    while time.monotonic() < deadline:
        loads = inflight_read(store, deployment)
        if not any(loads.get(upstream, 0.0) > 0 for upstream in upstreams):
            return
        time.sleep(0.2)
    logger.warning("%s: %s still busy after the drain timeout", deployment, upstreams)


def upstream_repair(*, deployment: str, upstream: str, reason: str) -> str:
    """Check the replica at ``upstream`` now; if dead: off the route, restarted, back on it.

    One ``replica_repaired`` event naming the cause. Under a lock per slot, so a burst of
    requests for one replica repairs it once: the later ones find it answering and do nothing.
    """
    slot = _slot_serving(deployment, upstream)
    if slot is None:
        logger.info("repair of %s for %s: no slot of it has that replica", upstream, deployment)
        return "unknown upstream"
    lock = backends.route_store().lock(
        f"modelyard:repair:{slot.runtime_key}",
        timeout=2 * settings.MODELYARD_SLOT_READY_TIMEOUT_SECONDS + 60,
        blocking_timeout=2 * settings.MODELYARD_SLOT_READY_TIMEOUT_SECONDS + 60,
    )
    with lock:
        backend = backends.runtime_backend()
        try:
            status = backend.slot_status(slot_key=slot.runtime_key)
        except SlotNotFound:
            return "unknown upstream"
        replica = next((r for r in status.replicas if r.url == upstream), None)
        # Both must hold: the backend still has the very server it started (a SIGKILLed
        # arbiter leaves a worker answering on the port) and the port answers now (a refused
        # connection may have been a blip).
        if replica is not None and replica.state == "ready" and _answers(upstream):
            return "healthy"
        # Off the route before the restart: the gateway stops trying it at once.
        dead = [
            {**replica, "state": "dead"} if replica["url"] == upstream else replica
            for replica in replicas_recorded(status)
        ]
        _record_replicas(slot, dead)
        try:
            event = backend.replica_repair(slot_key=slot.runtime_key, url=upstream)
        except RuntimeBackendError as exc:
            event_record(
                deployment=slot.deployment,
                kind="replica_repair_failed",
                slot=slot.color,
                message=f"{upstream} ({reason}): {exc}",
            )
            return "failed"
        finally:
            slot_replicas_sync(slot_id=slot.pk)
        if event is None:
            return "healthy"
        event_record(
            deployment=slot.deployment,
            kind=f"replica_{event.kind}",
            slot=slot.color,
            message=f"{upstream} ({reason} reported by the gateway): {event.message}",
        )
        return event.kind


def _slot_serving(deployment: str, upstream: str) -> Slot | None:
    for slot in Slot.objects.select_related("deployment").filter(deployment__name=deployment):
        urls = {replica["url"] for replica in slot.replicas} or {slot.url}
        if upstream in urls:
            return slot
    return None


def _record_replicas(slot: Slot, replicas: list[dict[str, Any]]) -> None:
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=slot.deployment_id)
        Slot.objects.filter(pk=slot.pk).update(replicas=replicas)
        if deployment.live_slot == slot.color:
            route_sync(deployment_id=deployment.pk)


def _answers(upstream: str) -> bool:
    """/readyz of one replica, now (a gateway's refused connection may be a blip)."""
    try:
        return httpx.get(f"{upstream}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
