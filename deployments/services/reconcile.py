"""The sweep that converges deployments on their recorded state, and the local servers' stop."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from deployments import backends
from deployments.choices import ACTIVE_ROLLOUT_STATES, RolloutState, SlotState
from deployments.models import Deployment, Rollout, Slot
from deployments.runtime.base import SlotEvent, SlotStatus
from deployments.services._steps import WORKER_DIED_EVENT, enqueue_advance, event_record
from deployments.services.builds import builds_abandoned_requeue
from deployments.services.leases import lease_break, leases_lapsed
from deployments.services.replicas import slot_replicas_sync
from deployments.services.routes import route_repair

logger = logging.getLogger(__name__)


def rollouts_stuck() -> list[int]:
    """Active rollouts whose state has not moved for a while (killed worker, lost message)."""
    limit = timezone.now() - timedelta(seconds=settings.MODELYARD_ROLLOUT_STUCK_SECONDS)
    # A pending rollout only waits for its first task: a minute means the message was lost.
    pending = Rollout.objects.filter(
        state=RolloutState.PENDING, state_changed_at__lt=timezone.now() - timedelta(seconds=60)
    )
    baking_due = Rollout.objects.filter(
        state=RolloutState.BAKING, bake_until__lt=timezone.now() - timedelta(seconds=60)
    )
    stuck = Rollout.objects.filter(state__in=ACTIVE_ROLLOUT_STATES, state_changed_at__lt=limit)
    return sorted(
        {
            *stuck.values_list("id", flat=True),
            *pending.values_list("id", flat=True),
            *baking_due.values_list("id", flat=True),
        }
    )


def rollouts_abandoned_resume() -> list[str]:
    """Rollouts whose worker died mid-step (lease lapsed): one ``worker_died`` event naming
    the worker and the step it held, and the rollout resumed at once (not after
    MODELYARD_ROLLOUT_STUCK_SECONDS)."""
    driven = Rollout.objects.filter(state__in=[*ACTIVE_ROLLOUT_STATES, RolloutState.BAKING])
    actions = []
    for lapsed in leases_lapsed(driven, unheld_counts=False):
        if not lease_break(queryset=driven, lapsed=lapsed, state_changed_at=timezone.now()):
            continue  # renewed meanwhile, or another sweep took it
        rollout = Rollout.objects.select_related("deployment", "version").get(pk=lapsed.pk)
        what = (
            f"rollout worker died ({lapsed.describe()}) holding rollout {rollout.pk} "
            f"of v{rollout.version.number} in {rollout.state}"
        )
        event_record(
            deployment=rollout.deployment, kind=WORKER_DIED_EVENT, message=f"{what}; resumed"
        )
        logger.warning("%s; resumed", what)
        enqueue_advance(rollout.pk)
        actions.append(f"rollout {rollout.pk}: {what}; resumed")
    return actions


def _slot_events_record(events: Iterable[SlotEvent]) -> list[str]:
    """Record what the backend reports of each slot as a ``slot_<kind>`` deployment event
    (events of slots no deployment has are only listed); one line per event."""
    slots_by_key = {s.runtime_key: s for s in Slot.objects.select_related("deployment")}
    lines = []
    for event in events:
        lines.append(f"{event.slot_key}: {event.kind}: {event.message}")
        slot = slots_by_key.get(event.slot_key)
        if slot is not None:
            event_record(
                deployment=slot.deployment,
                kind=f"slot_{event.kind}",
                message=event.message,
                slot=slot.color,
            )
    return lines


def _replicas_line(status: SlotStatus) -> str:
    return ", ".join(f"{replica.index} {replica.state}" for replica in status.replicas)


def runtime_servers_stop(*, reason: str) -> list[str]:
    """Stop every slot server of the local backend and record each as ``slot_stopped``.

    `make run`'s shutdown calls this (devstack): the next start's sweep restarts them, and
    the deployment's events read "stopped", then "restarted", never "crashed".
    """
    backend = backends.runtime_backend()
    if not hasattr(backend, "servers_stop"):
        return []  # Kubernetes slots outlive the platform's processes by design
    return _slot_events_record(backend.servers_stop(reason=reason))


def deployments_reconcile() -> list[str]:
    """Converge every deployment on its recorded state; return what was done.

    Restarts crashed slot servers (the backend's supervisor) and records why, points slot
    URLs and routes at where the servers really are, republishes routes Redis lost, stops
    slots that nothing needs, re-queues builds and resumes rollouts whose worker died (lease
    lapsed), and resumes stuck rollouts.
    """
    backend = backends.runtime_backend()
    actions = _slot_events_record(backend.supervise_once())
    statuses = {status.slot_key: status for status in backend.slots()}
    needed = set()
    for deployment in Deployment.objects.all():
        active = Rollout.objects.filter(
            deployment=deployment, state__in=[*ACTIVE_ROLLOUT_STATES, RolloutState.BAKING]
        )
        for slot in Slot.objects.select_related("deployment").filter(deployment=deployment):
            if slot.color == deployment.live_slot or active.exists():
                needed.add(slot.runtime_key)
            status = statuses.get(slot.runtime_key)
            if (
                status is not None
                and status.running
                and slot.state == SlotState.READY
                and status.url != slot.url
            ):
                Slot.objects.filter(pk=slot.pk).update(url=status.url)
                event_record(
                    deployment=deployment,
                    kind="slot_moved",
                    slot=slot.color,
                    message=f"{slot} now answers at {status.url}",
                )
            if status is not None and slot_replicas_sync(slot_id=slot.pk, status=status):
                actions.append(f"{slot}: replicas {_replicas_line(status)}")
        if route_repair(deployment=deployment):
            actions.append(f"{deployment}: route republished")
    for status in statuses.values():
        if status.running and status.slot_key not in needed:
            backend.slot_stop(slot_key=status.slot_key)
            actions.append(f"{status.slot_key}: stopped (no deployment needs it)")
    actions += builds_abandoned_requeue()
    actions += rollouts_abandoned_resume()
    for rollout_id in rollouts_stuck():
        rollout = Rollout.objects.select_related("deployment").get(pk=rollout_id)
        Rollout.objects.filter(pk=rollout_id).update(state_changed_at=timezone.now())
        event_record(
            deployment=rollout.deployment,
            kind="rollout_resumed",
            message=f"rollout {rollout_id} had not moved from {rollout.state}; resumed",
        )
        enqueue_advance(rollout_id)
        actions.append(f"rollout {rollout_id}: resumed")
    return actions
