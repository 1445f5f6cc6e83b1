"""Canary rollouts: the new version takes a growing share of traffic, judged at each step.

A canary rollout builds, starts and smoke-tests the new version in the idle slot like a
blue-green one, then, instead of switching, enters ``canary``: the route gets a canary arm
(``gateway.routes``) with the first step's weight while the live slot keeps serving the rest.
Every ``MODELYARD_CANARY_JUDGE_SECONDS`` the judge (``monitoring.judge``) compares the canary
to the live version over the current step's window:

- ``fail`` aborts at once: the canary arm leaves the route, the idle slot stops, the rollout
  ends ``aborted`` with the evidence (counts, statistics, p-values) on it and in the audit log;
- ``pass``, with the step's minimum time and requests reached, moves to the next step; after
  the last one the rollout is promoted (``switching``: the blue-green switch, then baking);
- ``not_yet`` waits. Too little data never promotes.

People (the API and the deployment page) can promote at any step, abort, pause and resume; a
paused canary keeps its weight and its judge: a failure still aborts it, it only never advances.
The canary reuses the idle slot, so one deployment runs one canary at a time, and the slot
the previous version would be kept warm in is the canary's: an abort needs no switch back.
"""

from __future__ import annotations

import itertools
import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from accounts.models import User
from core.choices import AuditAction
from core.errors import InvalidInput, InvalidState
from core.services import audit_record
from deployments.choices import RolloutState, RolloutStrategy
from deployments.models import Deployment, Rollout, Slot
from deployments.services._steps import (
    enqueue_advance,
    event_record,
    slot_stop,
    transition,
)
from deployments.services.routes import route_sync

logger = logging.getLogger(__name__)

DEFAULT_STEPS = [5, 25, 50]


class JudgeSettingsSerializer(serializers.Serializer):
    """The judge's tolerances (monitoring.judge.JudgePolicy) and the optional accuracy guard."""

    min_requests = serializers.IntegerField(min_value=1, max_value=10**9, required=False)
    max_error_rate_increase = serializers.FloatField(min_value=0, max_value=1, required=False)
    max_latency_increase = serializers.FloatField(min_value=0, max_value=100, required=False)
    alpha = serializers.FloatField(min_value=1e-9, max_value=0.5, required=False)
    max_accuracy_drop = serializers.FloatField(min_value=0, max_value=1, required=False)
    min_labels = serializers.IntegerField(min_value=1, max_value=10**9, required=False)


class CanaryPlanSerializer(serializers.Serializer):
    steps = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        min_length=1,
        max_length=10,
        default=DEFAULT_STEPS,
        help_text="Percent of requests on the canary at each step, increasing.",
    )
    min_step_seconds = serializers.IntegerField(min_value=5, max_value=7 * 86400, default=60)
    min_step_requests = serializers.IntegerField(min_value=1, max_value=10**9, default=200)
    auto_promote = serializers.BooleanField(
        default=True, help_text="Promote after the last step passes; else wait for a person."
    )
    judge = JudgeSettingsSerializer(required=False, default=dict)

    def validate_steps(self, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise serializers.ValidationError(f"steps must increase, got {steps}.")
        return steps


def canary_plan_clean(plan: dict[str, Any] | None) -> dict[str, Any]:
    """The plan with its defaults, or InvalidInput naming each bad field."""
    data = CanaryPlanSerializer(data=plan or {})
    if not data.is_valid():
        fields = ", ".join(sorted(data.errors))
        raise InvalidInput(
            f"The canary plan is invalid ({fields}).", code="invalid_plan", details=data.errors
        )
    return dict(data.validated_data)


def canary_weight(rollout: Rollout) -> int:
    """The canary's share of requests now, in basis points (the route's unit)."""
    steps = rollout.plan.get("steps") or DEFAULT_STEPS
    return int(steps[min(rollout.canary_step, len(steps) - 1)]) * 100


def _judge_interval() -> float:
    return float(settings.MODELYARD_CANARY_JUDGE_SECONDS)


def _window_start(rollout: Rollout) -> datetime:
    # Roll-ups are per minute and a row counts when it starts in the window: from the minute
    # the step began (a few seconds of the previous step's share come along, on both arms).
    started = rollout.step_started_at or rollout.state_changed_at
    return started.replace(second=0, microsecond=0)


def canary_enter(rollout: Rollout, note: str) -> bool:
    """verifying -> canary: the first step's weight published with the move."""
    with transaction.atomic():
        moved = transition(
            rollout,
            RolloutState.CANARY,
            f"{note}; canary at {canary_weight(rollout) // 100} % of requests",
            canary_step=0,
            step_started_at=timezone.now(),
        )
        if moved:
            route_sync(deployment_id=rollout.deployment_id)
            enqueue_advance(rollout.pk, countdown=_judge_interval())
    return False  # the judge's ticks go on from the queue


def step_canary(rollout: Rollout) -> bool:
    """One tick of the judge (see the module docstring); True when promoted (switch next)."""
    from monitoring.services.judge import canary_judge

    now = timezone.now()
    baseline = rollout.previous_version
    judged = canary_judge(
        deployment=rollout.deployment,
        baseline_version=baseline.number if baseline else 0,
        canary_version=rollout.version.number,
        start=_window_start(rollout),
        end=now,
        policy=rollout.plan.get("judge") or {},
    )
    evidence = {
        **judged.as_dict(),
        "at": now.isoformat(),
        "step": rollout.canary_step,
        "weight": canary_weight(rollout),
    }
    Rollout.objects.filter(pk=rollout.pk, state=RolloutState.CANARY).update(judgement=evidence)
    if judged.verdict == "fail":
        failed = [m for m in judged.metrics if m.verdict == "fail"]
        _abort(
            rollout,
            actor=None,
            reason="the judge failed the canary: " + "; ".join(m.reason for m in failed),
            evidence=evidence,
        )
        return False
    canary_requests = judged.metrics[0].counts.get("canary_requests", 0)
    started = rollout.step_started_at or rollout.state_changed_at
    step_done = (
        judged.verdict == "pass"
        and (now - started).total_seconds() >= rollout.plan.get("min_step_seconds", 60)
        and canary_requests >= rollout.plan.get("min_step_requests", 200)
    )
    if step_done and not rollout.paused:
        last = rollout.canary_step >= len(rollout.plan.get("steps") or DEFAULT_STEPS) - 1
        if not last:
            _next_step(rollout, evidence)
        elif rollout.plan.get("auto_promote", True):
            return _promote(
                rollout, actor=None, reason="every step passed the judge", evidence=evidence
            )
    enqueue_advance(rollout.pk, countdown=_judge_interval())
    return False


def _next_step(rollout: Rollout, evidence: dict[str, Any]) -> None:
    step = rollout.canary_step + 1
    with transaction.atomic():
        # Conditional on the step read: a duplicate tick never skips a step.
        moved = Rollout.objects.filter(
            pk=rollout.pk, state=RolloutState.CANARY, canary_step=rollout.canary_step
        ).update(canary_step=step, step_started_at=timezone.now())
        if not moved:
            return
        rollout.refresh_from_db()
        weight = canary_weight(rollout) // 100
        message = f"canary step {step + 1}: {weight} % of requests (the judge passed step {step})"
        _log(rollout, message, evidence)
        route_sync(deployment_id=rollout.deployment_id)
        audit_record(
            actor=None,
            action=AuditAction.ROLLOUT_STATE_CHANGED,
            obj=rollout,
            reason=message,
            after={
                "state": rollout.state,
                "canary_step": step,
                "weight": weight,
                "judgement": evidence,
            },
        )


def _log(rollout: Rollout, message: str, evidence: dict[str, Any] | None = None) -> None:
    from core.state_machine import json_append

    entry: dict[str, Any] = {
        "at": timezone.now().isoformat(),
        "state": rollout.state,
        "message": message,
    }
    if evidence is not None:
        entry["judgement"] = evidence
    Rollout.objects.filter(pk=rollout.pk).update(steps=json_append("steps", entry))


def _promote(
    rollout: Rollout, *, actor: User | None, reason: str, evidence: dict[str, Any] | None
) -> bool:
    return transition(
        rollout,
        RolloutState.SWITCHING,
        f"canary promoted: {reason}",
        actor=actor,
        evidence={"judgement": evidence} if evidence else None,
    )


def _abort(
    rollout: Rollout, *, actor: User | None, reason: str, evidence: dict[str, Any] | None
) -> bool:
    """canary -> aborted: the route without the canary arm in the same transaction."""
    with transaction.atomic():
        moved = transition(
            rollout,
            RolloutState.ABORTED,
            f"canary aborted: {reason}",
            actor=actor,
            evidence={"judgement": evidence} if evidence else None,
            error=reason[:5000],
        )
        if moved:
            route_sync(deployment_id=rollout.deployment_id)
    if moved:
        slot = Slot.objects.select_related("deployment").get(
            deployment=rollout.deployment, color=rollout.target_slot
        )
        if slot.deployment.live_slot != slot.color:  # never stop what serves traffic
            slot_stop(slot)
        event_record(
            deployment=rollout.deployment,
            kind="canary_aborted",
            message=f"canary of v{rollout.version.number} aborted: {reason}",
            slot=rollout.target_slot,
        )
    return moved


def _canary_of(deployment: Deployment, rollout_id: int) -> Rollout:
    rollout = (
        Rollout.objects.select_related("deployment", "version", "previous_version")
        .filter(deployment=deployment, pk=rollout_id)
        .first()
    )
    if rollout is None:
        from core.errors import NotFound

        raise NotFound(f"{deployment} has no rollout {rollout_id}.")
    if rollout.strategy != RolloutStrategy.CANARY or rollout.state != RolloutState.CANARY:
        raise InvalidState(
            f"Rollout {rollout.pk} is {rollout.state}, not a canary taking traffic.",
            code="not_a_running_canary",
        )
    return rollout


def canary_promote(
    *, deployment: Deployment, rollout_id: int, actor: User | None, reason: str = ""
) -> Rollout:
    """Skip the remaining steps: the canary's version takes all traffic (switch, then bake)."""
    rollout = _canary_of(deployment, rollout_id)
    why = reason or "promoted by a person"
    if not _promote(rollout, actor=actor, reason=why, evidence=rollout.judgement or None):
        raise InvalidState(f"Rollout {rollout.pk} moved meanwhile; it is no longer a canary.")
    enqueue_advance(rollout.pk)
    return Rollout.objects.get(pk=rollout.pk)


def canary_abort(
    *, deployment: Deployment, rollout_id: int, actor: User | None, reason: str = ""
) -> Rollout:
    """End the canary: all traffic back on the live version at once."""
    rollout = _canary_of(deployment, rollout_id)
    why = reason or "aborted by a person"
    if not _abort(rollout, actor=actor, reason=why, evidence=rollout.judgement or None):
        raise InvalidState(f"Rollout {rollout.pk} moved meanwhile; it is no longer a canary.")
    return Rollout.objects.get(pk=rollout.pk)


def canary_pause(
    *, deployment: Deployment, rollout_id: int, actor: User | None, paused: bool
) -> Rollout:
    """Hold (or release) the canary at its step; its judge still aborts a failing canary."""
    rollout = _canary_of(deployment, rollout_id)
    if rollout.paused == paused:
        return rollout
    Rollout.objects.filter(pk=rollout.pk).update(paused=paused)
    rollout.refresh_from_db()
    message = (
        f"canary paused at {canary_weight(rollout) // 100} %"
        if paused
        else f"canary resumed at {canary_weight(rollout) // 100} %"
    )
    _log(rollout, message)
    audit_record(
        actor=actor,
        action=AuditAction.ROLLOUT_STATE_CHANGED,
        obj=rollout,
        reason=message,
        after={"state": rollout.state, "paused": paused},
    )
    return rollout


CANARY_ACTIONS = ("promote", "abort", "pause", "resume")


def canary_act(
    *, deployment: Deployment, rollout_id: int, action: str, actor: User | None, reason: str = ""
) -> Rollout:
    """One of CANARY_ACTIONS by name: what the API and the deployment page both call."""
    if action == "promote":
        return canary_promote(
            deployment=deployment, rollout_id=rollout_id, actor=actor, reason=reason
        )
    if action == "abort":
        return canary_abort(
            deployment=deployment, rollout_id=rollout_id, actor=actor, reason=reason
        )
    if action in ("pause", "resume"):
        return canary_pause(
            deployment=deployment, rollout_id=rollout_id, actor=actor, paused=action == "pause"
        )
    raise InvalidInput(
        f"Unknown canary action {action!r}; one of {', '.join(CANARY_ACTIONS)}.",
        code="invalid_action",
    )
