"""Progressive delivery: canary and shadow rollouts, in the idle slot, judged before they count.

Both build, start and smoke-test the new version in the idle slot like a blue-green rollout;
then, instead of switching:

**canary** -- the route gets a canary arm (``gateway.routes``) with the first step's weight
while the live slot keeps serving the rest. Every ``MODELYARD_CANARY_JUDGE_SECONDS`` the judge
(``monitoring.judge``) compares the canary to the live version over the current step's window:

- ``fail`` aborts at once: the canary arm leaves the route, the idle slot stops, the rollout
  ends ``aborted`` with the evidence (counts, statistics, p-values) on it and in the audit log;
- ``pass``, with the step's minimum time and requests reached, moves to the next step; after
  the last one the rollout is promoted (``switching``: the blue-green switch, then baking);
- ``not_yet`` waits. Too little data never promotes.

People (the API and the deployment page) can promote at any step, abort, pause and resume; a
paused canary keeps its weight and its judge: a failure still aborts it, it only never advances.

**shadow** -- the route gets a shadow arm: the gateway mirrors ``mirror_percent`` of live
requests to it, answers from live only and compares both answers per request
(``gateway.shadow``). Each tick stores the comparison since the shadow began (agreement,
probability differences, latency difference, the shadow's errors) on the rollout. Nothing is
decided automatically (a shadow costs users nothing): a person promotes it to a canary (its plan
then applies) or straight to live, or aborts it.

One idle slot, so one canary or shadow per deployment at a time, and the slot the previous
version would be kept warm in is the new version's: an abort needs no switch back.
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
from deployments import backends
from deployments.choices import ACTIVE_ROLLOUT_STATES, RolloutState, RolloutStrategy
from deployments.models import Deployment, Rollout, Slot
from deployments.runtime.base import PRIORITY_NORMAL, RuntimeBackendError
from deployments.services._steps import (
    enqueue_advance,
    enqueue_slot_release,
    event_record,
    slot_stop,
    transition,
)
from deployments.services.routes import route_sync
from gateway.shadow_reports import shadow_read

logger = logging.getLogger(__name__)

DEFAULT_STEPS = [5, 25, 50]


class JudgeSettingsSerializer(serializers.Serializer[Any]):
    """The judge's tolerances (monitoring.judge.JudgePolicy) and its optional guard metrics
    (monitoring.services.judge: accuracy, MAE, cost per prediction, drift)."""

    min_requests = serializers.IntegerField(min_value=1, max_value=10**9, required=False)
    max_error_rate_increase = serializers.FloatField(min_value=0, max_value=1, required=False)
    max_latency_increase = serializers.FloatField(min_value=0, max_value=100, required=False)
    alpha = serializers.FloatField(min_value=1e-9, max_value=0.5, required=False)
    max_accuracy_drop = serializers.FloatField(min_value=0, max_value=1, required=False)
    max_mae_increase = serializers.FloatField(min_value=0, max_value=1e12, required=False)
    max_cost_increase = serializers.FloatField(min_value=0, max_value=1000, required=False)
    max_drift_increase = serializers.FloatField(min_value=0, max_value=100, required=False)
    min_labels = serializers.IntegerField(min_value=1, max_value=10**9, required=False)


class StickySerializer(serializers.Serializer[Any]):
    """One request key: {"header": "X-User-Id"} or {"field": "user_id"} (a top-level field)."""

    header = serializers.RegexField(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$", required=False)
    field = serializers.CharField(min_length=1, max_length=128, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if len(attrs) != 1:
            raise serializers.ValidationError("name exactly one of 'header' or 'field'.")
        if "header" in attrs:
            return {"header": attrs["header"].lower()}  # the gateway sees them lowercased
        return attrs


class CanaryPlanSerializer(serializers.Serializer[Any]):
    """A canary's plan (and a shadow's, for when it is promoted to a canary)."""

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
    sticky = StickySerializer(
        required=False,
        help_text="Sticky assignment: the same key (a header, or a body field) always gets the "
        "same arm; without it each request is drawn at random.",
    )

    def validate_steps(self, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise serializers.ValidationError(f"steps must increase, got {steps}.")
        return steps


class ShadowPlanSerializer(CanaryPlanSerializer):
    mirror_percent = serializers.IntegerField(
        min_value=1, max_value=100, default=100, help_text="Percent of live requests mirrored."
    )


def plan_clean(strategy: str, plan: dict[str, Any] | None) -> dict[str, Any]:
    """A canary's or a shadow's plan with its defaults, or InvalidInput naming each bad field."""
    kind = ShadowPlanSerializer if strategy == RolloutStrategy.SHADOW else CanaryPlanSerializer
    data = kind(data=plan or {})
    if not data.is_valid():
        fields = ", ".join(sorted(data.errors))
        raise InvalidInput(
            f"The {strategy} plan is invalid ({fields}).", code="invalid_plan", details=data.errors
        )
    return dict(data.validated_data)


def canary_plan_clean(plan: dict[str, Any] | None) -> dict[str, Any]:
    return plan_clean(RolloutStrategy.CANARY, plan)


def shadow_weight(rollout: Rollout) -> int:
    """The share of live requests mirrored, in basis points (the route's unit)."""
    return int(rollout.plan.get("mirror_percent", 100)) * 100


def arm_weight(rollout: Rollout) -> int:
    """The route arm's weight of a running canary (its share) or shadow (mirrored share)."""
    return (
        shadow_weight(rollout) if rollout.state == RolloutState.SHADOW else canary_weight(rollout)
    )


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


def progressive_enter(rollout: Rollout, note: str) -> bool:
    """verifying -> canary (the first step's weight) or shadow (mirroring), the route published
    with the move."""
    if rollout.strategy == RolloutStrategy.SHADOW:
        to = RolloutState.SHADOW
        note = f"{note}; {rollout.plan.get('mirror_percent', 100)} % of live requests mirrored"
    else:
        to = RolloutState.CANARY
        note = f"{note}; canary at {canary_weight(rollout) // 100} % of requests"
    with transaction.atomic():
        moved = transition(rollout, to, note, canary_step=0, step_started_at=timezone.now())
        if moved:
            route_sync(deployment_id=rollout.deployment_id)
            enqueue_advance(rollout.pk, countdown=_judge_interval())
    return False  # the ticks go on from the queue


def step_shadow(rollout: Rollout) -> bool:
    """One tick of a shadow: the comparison since it began, stored on the rollout."""
    now = timezone.now()
    totals = shadow_read(
        backends.route_store(),  # shared and cached: never closed here
        rollout.deployment.name,
        rollout.version.number,
        rollout.step_started_at or rollout.state_changed_at,
        now,
    )
    evidence = {"shadow": totals.as_dict(), "at": now.isoformat(), "weight": shadow_weight(rollout)}
    Rollout.objects.filter(pk=rollout.pk, state=RolloutState.SHADOW).update(judgement=evidence)
    enqueue_advance(rollout.pk, countdown=_judge_interval())
    return False


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
        f"{rollout.state} promoted: {reason}",
        actor=actor,
        evidence={"judgement": evidence} if evidence else None,
    )


def _to_canary(rollout: Rollout, *, actor: User | None, reason: str) -> bool:
    """shadow -> canary: the shadow arm becomes a canary arm at the first step, one publish.

    First the slot's servers get normal CPU priority back (a shadow's run low: they answer
    users now; a backend that cannot raise it in place restarts them at it)."""
    slot = Slot.objects.filter(
        deployment_id=rollout.deployment_id, color=rollout.target_slot
    ).first()
    if slot is not None:
        try:
            backends.runtime_backend().slot_priority(
                slot_key=slot.runtime_key, priority=PRIORITY_NORMAL
            )
        except RuntimeBackendError as exc:
            # The canary arm then fails over to live in the gateway, and the judge sees it.
            logger.warning("shadow %s: no normal CPU priority for its servers: %s", rollout.pk, exc)
    with transaction.atomic():
        moved = transition(
            rollout,
            RolloutState.CANARY,
            f"shadow promoted to a canary at {int(rollout.plan['steps'][0])} % of requests: "
            f"{reason}",
            actor=actor,
            evidence={"judgement": rollout.judgement} if rollout.judgement else None,
            canary_step=0,
            step_started_at=timezone.now(),
            judgement={},
        )
        if moved:
            route_sync(deployment_id=rollout.deployment_id)
            enqueue_advance(rollout.pk, countdown=_judge_interval())
    return moved


def _abort(
    rollout: Rollout, *, actor: User | None, reason: str, evidence: dict[str, Any] | None
) -> bool:
    """canary or shadow -> aborted: the route without its arm in the same transaction."""
    kind = rollout.state
    with transaction.atomic():
        moved = transition(
            rollout,
            RolloutState.ABORTED,
            f"{kind} aborted: {reason}",
            actor=actor,
            evidence={"judgement": evidence} if evidence else None,
            error=reason[:5000],
        )
        if moved:
            route_sync(deployment_id=rollout.deployment_id)
    if moved:
        slot = Slot.objects.get(deployment=rollout.deployment, color=rollout.target_slot)
        # The worker stops the slot: an abort answers as soon as the route has changed
        # (stopping a server waits for it to drain, seconds a person should not wait).
        enqueue_slot_release(slot.pk)
        event_record(
            deployment=rollout.deployment,
            kind=f"{kind}_aborted",
            message=f"{kind} of v{rollout.version.number} aborted: {reason}",
            slot=rollout.target_slot,
        )
    return moved


RUNNING = (RolloutState.CANARY, RolloutState.SHADOW)


def _running_of(
    deployment: Deployment, rollout_id: int, states: tuple[str, ...] = RUNNING
) -> Rollout:
    rollout = (
        Rollout.objects.select_related("deployment", "version", "previous_version")
        .filter(deployment=deployment, pk=rollout_id)
        .first()
    )
    if rollout is None:
        from core.errors import NotFound

        raise NotFound(f"{deployment} has no rollout {rollout_id}.")
    if rollout.state not in states:
        what = " or a ".join(str(state) for state in states)
        raise InvalidState(
            f"Rollout {rollout.pk} is {rollout.state}, not a running {what}.",
            code="not_a_running_canary",
        )
    return rollout


def _moved_meanwhile(rollout: Rollout) -> InvalidState:
    return InvalidState(
        f"Rollout {rollout.pk} moved meanwhile; it is no longer {rollout.state}.",
        code="not_a_running_canary",
    )


def canary_promote(
    *, deployment: Deployment, rollout_id: int, actor: User | None, reason: str = ""
) -> Rollout:
    """The canary's (or shadow's) version takes all traffic now: switch, then bake."""
    rollout = _running_of(deployment, rollout_id)
    why = reason or "promoted by a person"
    if not _promote(rollout, actor=actor, reason=why, evidence=rollout.judgement or None):
        raise _moved_meanwhile(rollout)
    enqueue_advance(rollout.pk)
    return Rollout.objects.get(pk=rollout.pk)


def shadow_to_canary(
    *, deployment: Deployment, rollout_id: int, actor: User | None, reason: str = ""
) -> Rollout:
    """A shadow starts answering real requests: a canary at its plan's first step."""
    rollout = _running_of(deployment, rollout_id, (RolloutState.SHADOW,))
    if not _to_canary(rollout, actor=actor, reason=reason or "promoted by a person"):
        raise _moved_meanwhile(rollout)
    return Rollout.objects.get(pk=rollout.pk)


def canary_abort(
    *, deployment: Deployment, rollout_id: int, actor: User | None, reason: str = ""
) -> Rollout:
    """End the canary or shadow: all traffic on the live version alone, at once."""
    rollout = _running_of(deployment, rollout_id)
    why = reason or "aborted by a person"
    if not _abort(rollout, actor=actor, reason=why, evidence=rollout.judgement or None):
        raise _moved_meanwhile(rollout)
    return Rollout.objects.get(pk=rollout.pk)


def canary_pause(
    *, deployment: Deployment, rollout_id: int, actor: User | None, paused: bool
) -> Rollout:
    """Hold (or release) the canary at its step; its judge still aborts a failing canary."""
    rollout = _running_of(deployment, rollout_id, (RolloutState.CANARY,))
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


CANARY_ACTIONS = ("promote", "canary", "abort", "pause", "resume")


def canary_act(
    *, deployment: Deployment, rollout_id: int, action: str, actor: User | None, reason: str = ""
) -> Rollout:
    """One of CANARY_ACTIONS by name (``canary``: a shadow becomes a canary), for a running
    canary or shadow: what the API and the deployment page both call."""
    if action == "promote":
        return canary_promote(
            deployment=deployment, rollout_id=rollout_id, actor=actor, reason=reason
        )
    if action == "canary":
        return shadow_to_canary(
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


def slot_release(*, slot_id: int) -> str:
    """Stop ``slot`` unless it is live or a running rollout targets it (an aborted canary's
    slot, once the route no longer sends it anything)."""
    with transaction.atomic():
        slot = Slot.objects.select_related("deployment").select_for_update().get(pk=slot_id)
        needed = slot.color == slot.deployment.live_slot or (
            Rollout.objects.filter(
                deployment=slot.deployment_id,
                target_slot=slot.color,
                state__in=ACTIVE_ROLLOUT_STATES,
            ).exists()
        )
    if needed:
        return "kept: live or a rollout's target"
    slot_stop(slot)
    return "stopped"
