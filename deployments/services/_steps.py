"""The rollout state machine's shared plumbing: transitions, the step log, events, enqueueing.

Internal to deployments.services: builds, rollouts, rollback and reconcile each use it, so none
of them imports another for it.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.choices import AuditAction
from core.state_machine import StateMachine, json_append
from deployments import backends
from deployments.choices import RolloutState, SlotColor, SlotState
from deployments.models import Build, Deployment, DeploymentEvent, Rollout, Slot
from deployments.runtime.base import RuntimeBackendError

logger = logging.getLogger(__name__)

R = RolloutState
# Every move a rollout makes after it is inserted. A rollback's rollout is inserted in
# starting or already in baking (rollback.py), which is an insert, not a move. No code moves
# a rollout to superseded (a choice since the first migration, never written): no row leads there.
ROLLOUT_STATES: StateMachine[Rollout] = StateMachine(
    Rollout,
    {
        R.PENDING: {R.BUILDING, R.FAILED},
        R.BUILDING: {R.STARTING, R.FAILED},
        R.STARTING: {R.VERIFYING, R.FAILED},
        R.VERIFYING: {R.SWITCHING, R.CANARY, R.SHADOW, R.FAILED},
        # Promoted (by the judge after the last step, or by a person): the switch as in
        # blue-green; aborted by the judge or a person: the live version kept.
        R.CANARY: {R.SWITCHING, R.ABORTED, R.FAILED},
        # A shadow is promoted to a canary (a share of real answers) or straight to live.
        R.SHADOW: {R.CANARY, R.SWITCHING, R.ABORTED, R.FAILED},
        R.SWITCHING: {R.BAKING, R.FAILED},
        R.BAKING: {R.LIVE, R.ROLLED_BACK},
        R.LIVE: set(),
        R.FAILED: set(),
        R.ROLLED_BACK: set(),
        R.ABORTED: set(),
        R.SUPERSEDED: set(),
    },
)
TERMINAL_ROLLOUT_STATES = (R.LIVE, R.FAILED, R.ROLLED_BACK, R.ABORTED)
# The event of a worker that died holding a build or a rollout (its lease lapsed).
WORKER_DIED_EVENT = "worker_died"


def other_color(color: str) -> str:
    return SlotColor.GREEN if color == SlotColor.BLUE else SlotColor.BLUE


def event_record(*, deployment: Deployment, kind: str, message: str, slot: str = "") -> None:
    DeploymentEvent.objects.create(
        deployment=deployment, kind=kind, message=message[:5000], slot=slot
    )


def log_step(rollout: Rollout, message: str, **extra: Any) -> None:
    rollout.steps = [
        *rollout.steps,
        {"at": timezone.now().isoformat(), "state": rollout.state, "message": message, **extra},
    ]


def enqueue_advance(rollout_id: int, countdown: float = 0) -> None:
    from deployments.tasks import rollout_advance_task

    transaction.on_commit(
        lambda: rollout_advance_task.apply_async((rollout_id,), countdown=countdown)
    )


def enqueue_slot_release(slot_id: int) -> None:
    from deployments.tasks import slot_release_task

    transaction.on_commit(lambda: slot_release_task.delay(slot_id))


def transition(
    rollout: Rollout,
    to: str,
    message: str,
    *,
    actor: Any | None = None,
    evidence: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move ``rollout`` from the state it was read in to ``to`` if nobody else has (one
    conditional UPDATE); a move the table refuses raises InvalidState, a lost one is False.
    ``actor`` and ``evidence`` (beside the version) go into the audit record."""
    now = timezone.now()
    if to in TERMINAL_ROLLOUT_STATES:
        fields["finished_at"] = now
    # The step entry as log_step writes it, in the state moved to, appended in the UPDATE
    # (json_append), so a step another writer logged meanwhile is never overwritten.
    entry: dict[str, Any] = {"at": now.isoformat(), "state": str(to), "message": message}
    if evidence and evidence.get("judgement"):
        # The verdict that moved it (a canary's last step promoted, a failed judge's abort),
        # as progressive._log keeps the one that closed each earlier step: the page shows it.
        entry["judgement"] = evidence["judgement"]
    won = ROLLOUT_STATES.move(
        rollout,
        to,
        at=now,
        fields={**fields, "steps": json_append("steps", entry)},
        actor=actor,
        audit_action=AuditAction.ROLLOUT_STATE_CHANGED,
        reason=message[:500],
        evidence={"version": rollout.version.number, **(evidence or {})},
    )
    if won:
        rollout.refresh_from_db()
    return won


def fail(rollout: Rollout, error: str) -> None:
    logger.warning("rollout %s failed: %s", rollout.pk, error)
    if transition(rollout, RolloutState.FAILED, f"failed: {error}", error=error[:5000]):
        slot = Slot.objects.select_related("deployment").get(
            deployment=rollout.deployment, color=rollout.target_slot
        )
        if slot.deployment.live_slot != slot.color:  # never stop what serves traffic
            slot_stop(slot)


def slot_stop(slot: Slot) -> None:
    try:
        backends.runtime_backend().slot_stop(slot_key=slot.runtime_key)
    except RuntimeBackendError as exc:
        logger.warning("stopping %s failed: %s", slot, exc)
    Slot.objects.filter(pk=slot.pk).update(state=SlotState.STOPPED, url="")


def end_baking(deployment: Deployment, *, to: str, note: str) -> None:
    """End the deployment's baking rollout (live, or rolled back), with a step note.

    A transition like any other: state_changed_at, finished_at and an audit record go with
    it (before, this path alone wrote the state with a save() and left no audit, so a rollout
    ended by the next rollout or a rollback had no record of how it ended)."""
    for baking in Rollout.objects.select_for_update().filter(
        deployment=deployment, state=RolloutState.BAKING
    ):
        transition(baking, to, note)


def switched_note(slot: str, version: int, bake_until: datetime, *, had_previous: bool) -> str:
    """The step-log line of a route switch (a rollout's, or a warm rollback's)."""
    if not had_previous:
        # A deployment's first rollout: nothing served before, so nothing is kept warm.
        return f"traffic switched to {slot} (v{version}); first version of this deployment"
    return (
        f"traffic switched to {slot} (v{version}); "
        f"previous slot kept warm until {bake_until:%H:%M:%S}"
    )


def pause_for_tests(step: str, obj: Rollout | Build) -> None:
    """Test-only: hold ``step`` open once so a fault test can kill the worker inside it.

    Active only with ``MODELYARD_TEST_PAUSE_DIR=<dir>`` in the environment (the fault tests set
    it on their stack's worker; nothing else does) and an ``<dir>/arm-<step>`` file the test
    creates: the worker consumes the arm file, creates ``<dir>/<step>-<object id>`` and waits,
    up to 60 s, until that file is removed. Consuming the arm file makes the resumed step run
    through.
    """
    directory = os.environ.get("MODELYARD_TEST_PAUSE_DIR")
    if not directory:
        return
    arm = Path(directory) / f"arm-{step}"
    try:
        arm.unlink()
    except FileNotFoundError:
        return
    hold = Path(directory) / f"{step}-{obj.pk}"
    hold.write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
