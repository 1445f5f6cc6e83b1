"""Rollback: traffic back to the previous version, instantly when its slot is still warm."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import User
from core.choices import AuditAction
from core.errors import Conflict, InvalidState
from core.services import audit_record
from deployments import backends, selectors
from deployments.choices import ACTIVE_ROLLOUT_STATES, RolloutKind, RolloutState, SlotState
from deployments.models import Deployment, Rollout, Slot
from deployments.runtime.base import RuntimeBackendError
from deployments.services._steps import (
    end_baking,
    enqueue_advance,
    log_step,
    other_color,
    switched_note,
)
from deployments.services.progressive import RUNNING, canary_abort
from deployments.services.routes import route_of, route_sync
from gateway.routes import route_publish
from registry.models import ModelVersion

logger = logging.getLogger(__name__)


def slot_is_warm(slot: Slot, version: ModelVersion) -> bool:
    """Whether ``slot`` can take traffic back right now, judged without probing its server.

    The backend answers from its own records (its process still alive, the supervisor's last
    /readyz probe not failing): an HTTP probe inside the rollback call cost 5-100 ms under
    load, which is most of the rollback's budget. A slot that died since the last probe
    is seen by the gateway at its first refused connection: it answers 503 and asks for the
    replica's repair at once (deployments.upstream_repair) -- the same as if it died a moment
    after a probe.
    """
    if slot.version_id != version.pk or slot.state != SlotState.READY or not slot.url:
        return False
    try:
        return backends.runtime_backend().slot_serving(
            slot_key=slot.runtime_key, bento_tag=slot.bento_tag
        )
    except RuntimeBackendError:
        return False


def deployment_rollback(
    *,
    deployment: Deployment,
    actor: User | None,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
) -> Rollout:
    """Flip traffic back to the previous version: instantly when its slot is still warm.

    With a warm slot the route flips first, inside the transaction that records the rollback
    (rollout row, audit, step log), so traffic moves without waiting for those writes. During
    a canary, the canary is aborted (its share back on the live version). If the
    transaction then fails, the route is put back to what the database says; if the process
    dies before it commits, the reconcile sweep's route_repair does the same.
    """
    canary = Rollout.objects.filter(deployment=deployment, state__in=RUNNING).first()
    if canary is not None:
        # Rolling back during a canary (or shadow): the live version never changed, so "back"
        # is all traffic on it alone at once, which is the canary's abort.
        return canary_abort(
            deployment=deployment,
            rollout_id=canary.pk,
            actor=actor,
            reason=reason or "rolled back during the canary",
        )
    flipped: list[bool] = []
    try:
        rollout = _rollback(
            deployment=deployment,
            actor=actor,
            reason=reason,
            evidence=evidence,
            flipped=flipped,
        )
    except BaseException:
        if flipped:
            # The database rolled back to the old live slot: make the route agree again.
            try:
                route_sync(deployment_id=deployment.pk)
            except Exception:
                logger.exception(
                    "rollback of %s failed after its route flipped, and the route could not be "
                    "put back; the reconcile sweep will repair it",
                    deployment,
                )
        raise
    return rollout


@transaction.atomic
def _rollback(
    *,
    deployment: Deployment,
    actor: User | None,
    reason: str,
    evidence: dict[str, Any] | None,
    flipped: list[bool],
) -> Rollout:
    # The lock and the "rollout in progress?" check in one query: each one before the
    # route flips is on the clock.
    deployment = (
        Deployment.objects.select_for_update()
        .annotate(
            rolling=Exists(
                Rollout.objects.filter(deployment=OuterRef("pk"), state__in=ACTIVE_ROLLOUT_STATES)
            )
        )
        .get(pk=deployment.pk)
    )
    if not deployment.live_slot:
        raise InvalidState(f"{deployment} serves nothing yet; there is nothing to roll back.")
    if deployment.rolling:
        active = Rollout.objects.filter(
            deployment=deployment, state__in=ACTIVE_ROLLOUT_STATES
        ).first()
        # None if it ended since the lock query (rollouts move without the deployment lock).
        which = f"Rollout {active.pk} is still {active.state}" if active else "A rollout was active"
        raise Conflict(
            f"{which} and has not moved traffic yet; the live version is unchanged.",
            code="rollout_in_progress",
        )
    slots = {}
    for slot in Slot.objects.select_related("version").filter(deployment=deployment):
        slot.deployment = deployment  # runtime_key reads it: no query per slot
        slots[slot.color] = slot
    live, other = slots[deployment.live_slot], slots[other_color(deployment.live_slot)]
    target_version = selectors.rollback_target_version(deployment=deployment, live=live, idle=other)
    if target_version is None:
        raise InvalidState(f"{deployment} has no previous version to roll back to.")
    warm = slot_is_warm(other, target_version)
    if warm:
        # Traffic first: the rows below only record what happened. Every query before the
        # publish is on the clock of the flip, so the route is built from the rows in hand.
        Deployment.objects.filter(pk=deployment.pk).update(live_slot=other.color)
        deployment.live_slot = other.color
        flipped.append(True)
        # Published while this transaction holds the deployment's row lock: any other
        # route_sync (a key change, the reconcile sweep) waits for the commit and then
        # publishes this same, committed state -- never the old slot over it.
        route_publish(backends.route_store(), route_of(deployment, other))
    end_baking(
        deployment,
        to=RolloutState.ROLLED_BACK,
        note="rolled back" + (f": {reason}" if reason else ""),
    )
    bake_until = timezone.now() + timedelta(seconds=deployment.bake_seconds) if warm else None
    # A warm rollback is switched already: its rollout starts out baking (one row written,
    # not a switching row moved on by a second transition).
    rollout = Rollout(
        deployment=deployment,
        version=target_version,
        previous_version=live.version,
        kind=RolloutKind.ROLLBACK,
        target_slot=other.color,
        state=RolloutState.SWITCHING
        if warm
        else RolloutState.STARTING,  # the state its first step is logged in
        bake_until=bake_until,
        created_by=actor,
        reason=reason,
    )
    log_step(
        rollout,
        f"rollback to v{target_version.number} "
        + ("(slot warm: instant switch)" if warm else "(slot cold: starting it first)"),
        evidence=evidence or {},
    )
    if bake_until is not None:  # warm
        rollout.state = RolloutState.BAKING
        log_step(
            rollout,
            switched_note(other.color, target_version.number, bake_until, had_previous=True),
        )
    rollout.save()
    audit_record(
        actor=actor,
        action=AuditAction.ROLLBACK,
        obj=rollout,
        reason=reason,
        before={"version": live.version.number if live.version else None},
        after={
            "version": target_version.number,
            "warm": warm,
            "state": rollout.state,
            "evidence": evidence or {},
        },
    )
    # Warm: the advance ends the bake; cold: it starts the previous version's slot now.
    enqueue_advance(rollout.pk, countdown=deployment.bake_seconds if warm else 0)
    return rollout
