"""Guards: rules over a deployment's live version that roll it back by themselves.

Guards watch a deployment while its last rollout bakes (and always, if its guard policy or
``MODELYARD_GUARDS_ALWAYS`` says so). Rules, from ``Deployment.guard_policy``:

============================= ================================================================
``max_error_rate``            share of the version's own failures (its 5xx, 503/504 reaching
                              it) among the requests it was answerable for, i.e. without the
                              4xx clients caused (default 0.05)
``max_p99_ms``                p99 latency (ms) since the switch
``drift``                     ``"drift"`` or ``"warn"``: the worst feature status that trips it
``max_cost_per_prediction``   resource cost / predictions since the switch
``min_requests``              requests (without client 4xx) needed before error rate /
                              latency / cost count (20)
``window_seconds``            look back at most this far (300); never before the switch
``always``                    also guard after the bake period
``max_accuracy_drop``         live accuracy (labelled predictions,
                              ``monitoring.selectors.quality``) below the previous version's
                              over the week before the switch by more than this (a classifier;
                              labels come late: pair it with a long ``window_seconds`` and
                              ``always``)
``max_mae_increase``          live mean absolute error above the previous version's over the
                              week before the switch by more than this (a regressor; the
                              same labels and baseline as ``max_accuracy_drop``)
``min_labels``                labelled predictions needed on both sides before either of the
                              two counts (100); when the previous version (or none) has fewer,
                              the version's own quality on its labelled reference rows
                              (``ModelVersion.baseline_quality``, with as many labelled rows)
                              is the baseline, and the evidence says ``baseline_source:
                              "reference labels"``
``max_missing_rate_increase`` a feature's live missing rate minus its reference missing rate
``max_out_of_range_rate``     share of a feature's rows outside the reference's range
``max_new_category_rate``     share of a feature's rows in a category the reference never had
``min_rows``                  sampled rows needed before the three data-quality rules count
                              (100)
============================= ================================================================

The figures of the drift, data-quality and label rules come from ``guard_evidence``: the
data-quality ones are ``monitoring.data_quality``'s over the sampled rows of the guard's drift
window (one computation for drift and data quality; each rule takes the worst feature), the
label ones ``monitoring.selectors.quality``'s.

A breach calls ``deployments.services.deployment_rollback`` with the figures that tripped it
as evidence; that writes the audit record. A live version that arrived by a rollback is never
rolled back automatically (that would flip-flop between two bad versions).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, InvalidState
from deployments.choices import RolloutKind, RolloutState
from deployments.models import Deployment, Rollout, Slot
from deployments.services import deployment_rollback
from monitoring import selectors
from monitoring.choices import DriftStatus, GuardAction, GuardRule
from monitoring.models import GuardBreach
from monitoring.services.guard_evidence import (
    DATA_QUALITY_RULES,
    LABEL_RULES,
    data_quality_evidence,
    drift_evidence,
    guard_window,
    labelled_evidence,
    labelled_quality,
)

logger = logging.getLogger(__name__)

GUARD_DEFAULTS: dict[str, Any] = {
    "max_error_rate": 0.05,
    "min_requests": 20,
    "window_seconds": 300,
}
KNOWN_KEYS = {
    "max_error_rate",
    "max_p99_ms",
    "drift",
    "max_cost_per_prediction",
    "min_requests",
    "window_seconds",
    "always",
    "max_accuracy_drop",
    "max_mae_increase",
    "min_labels",
    "max_missing_rate_increase",
    "max_out_of_range_rate",
    "max_new_category_rate",
    "min_rows",
}


def guard_policy(deployment: Deployment) -> dict[str, Any]:
    policy = {**GUARD_DEFAULTS, **(deployment.guard_policy or {})}
    unknown = set(policy) - KNOWN_KEYS
    if unknown:
        logger.warning("%s: unknown guard policy keys ignored: %s", deployment, sorted(unknown))
    return policy


def _switched_at(rollout: Rollout) -> datetime:
    """When traffic moved to the rollout's version (its step log says so)."""
    for step in reversed(rollout.steps or []):
        if str(step.get("message", "")).startswith(("traffic switched", "rollback to")):
            try:
                return datetime.fromisoformat(step["at"])
            except (KeyError, ValueError):
                break
    return rollout.state_changed_at


def guard_evaluate(
    *,
    deployment: Deployment,
    version_number: int,
    start: datetime,
    end: datetime,
    baseline_version: int | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Which rules the version breaks over ``[start, end)``, and the figures for each."""
    policy = guard_policy(deployment)
    min_requests = int(policy["min_requests"])
    # Roll-up rows are per minute: widen to the minute the switch happened in.
    minute_start = start.replace(second=0, microsecond=0)
    traffic = selectors.traffic_by_version(
        deployment=deployment, start=minute_start, end=end, version=version_number
    ).get(version_number, selectors.TrafficSummary())
    window = {"start": start.isoformat(), "end": end.isoformat()}
    breached: list[str] = []
    # A 4xx is the client's doing (a malformed body, a bad key, rows the model refuses):
    # neither a failure of the version nor a success that would dilute its failures. The
    # gateway counts only the version's own failures as errors (gateway.metrics); here the
    # 4xx leave the denominator too, so any key holder can neither trip nor mask this rule.
    answerable = traffic.requests - traffic.client_errors
    evidence: dict[str, Any] = {
        "version": version_number,
        "window": window,
        "requests": traffic.requests,
        "client_errors": traffic.client_errors,
        "answerable": answerable,
        "errors": traffic.errors,
    }
    enough = answerable >= min_requests
    if policy.get("max_error_rate") is not None and enough:
        rate = traffic.errors / answerable
        evidence["error_rate"] = {"value": rate, "threshold": float(policy["max_error_rate"])}
        if rate > float(policy["max_error_rate"]):
            breached.append(GuardRule.ERROR_RATE)
    if policy.get("max_p99_ms") is not None and enough:
        p99 = traffic.percentile_ms(0.99)
        evidence["p99_ms"] = {"value": p99, "threshold": float(policy["max_p99_ms"])}
        if p99 is not None and p99 > float(policy["max_p99_ms"]):
            breached.append(GuardRule.P99_LATENCY)
    if policy.get("max_cost_per_prediction") is not None and enough:
        use = selectors.resources_by_version(deployment=deployment, start=start, end=end).get(
            version_number
        )
        cost = selectors.cost_summary(use, traffic.predictions, selectors.prices_for(deployment))
        evidence["cost_per_prediction"] = {
            **cost,
            "threshold": float(policy["max_cost_per_prediction"]),
        }
        value = cost["cost_per_prediction"]
        if value is not None and value > float(policy["max_cost_per_prediction"]):
            breached.append(GuardRule.COST_PER_PREDICTION)
    level = policy.get("drift")
    quality_rules = [key for key in DATA_QUALITY_RULES if policy.get(key) is not None]
    drifting = level in (DriftStatus.WARN, DriftStatus.DRIFT)
    # Drift and data quality are one computation over the sampled rows (the drift window,
    # monitoring.data_quality): computed once, whichever of the rules asked for it.
    sampled = (
        guard_window(deployment, version_number, start, end) if drifting or quality_rules else None
    )
    if sampled is not None and drifting:
        evidence["drift"] = drift_evidence(sampled, str(level))
        if evidence["drift"]["features"]:
            breached.append(GuardRule.DRIFT)
    if sampled is not None:
        for key in quality_rules:
            figures = data_quality_evidence(sampled, key, float(policy[key]), policy)
            if figures is not None:
                rule = DATA_QUALITY_RULES[key]
                evidence[rule] = figures
                if figures["features"]:
                    breached.append(rule)
    label_rules = [
        (key, labelled) for key, labelled in LABEL_RULES.items() if policy.get(key) is not None
    ]
    if label_rules:
        quality = labelled_quality(deployment, version_number, baseline_version, start, end)
        for key, labelled in label_rules:
            figures = labelled_evidence(
                labelled, float(policy[key]), int(policy.get("min_labels", 100)), quality
            )
            if figures is not None:
                evidence[labelled.rule] = figures
                if figures["breached"]:
                    breached.append(labelled.rule)
    return breached, evidence


def _guarded_rollout(deployment: Deployment, *, always: bool) -> Rollout | None:
    """The rollout that put the live version there, if guards watch it now.

    Only the latest rollout that did not fail counts: one still in flight has not moved
    traffic yet, and a rollback (or a version it replaced) is never undone automatically.
    """
    latest = (
        Rollout.objects.select_related("version", "previous_version")
        .filter(deployment=deployment)
        .exclude(state=RolloutState.FAILED)
        .order_by("-created_at", "-id")
        .first()
    )
    if latest is None or latest.kind != RolloutKind.ROLLOUT:
        return None
    live = Slot.objects.filter(deployment=deployment, color=deployment.live_slot).first()
    if live is None or live.version_id != latest.version_id:
        return None
    if latest.state == RolloutState.BAKING or (latest.state == RolloutState.LIVE and always):
        return latest
    return None


def guards_check_deployment(
    *, deployment: Deployment, now: datetime | None = None
) -> GuardBreach | None:
    """Evaluate the deployment's guards once; on a breach roll back and record it."""
    now = now or timezone.now()
    policy = guard_policy(deployment)
    always = bool(policy.get("always", settings.MODELYARD_GUARDS_ALWAYS))
    rollout = _guarded_rollout(deployment, always=always)
    if rollout is None:
        return None
    start = max(_switched_at(rollout), now - timedelta(seconds=int(policy["window_seconds"])))
    previous = rollout.previous_version
    breached, evidence = guard_evaluate(
        deployment=deployment,
        version_number=rollout.version.number,
        start=start,
        end=now,
        baseline_version=previous.number if previous is not None else None,
    )
    if not breached:
        return None
    reason = f"guard breached: {', '.join(breached)} on v{rollout.version.number}"
    evidence = {"rules": breached, **evidence}
    try:
        with transaction.atomic():
            rollback = deployment_rollback(
                deployment=deployment, actor=None, reason=reason, evidence=evidence
            )
            return _breach_rolled_back(deployment, rollout, rollback, breached, evidence, reason)
    except (InvalidState, Conflict) as exc:
        # Nothing to go back to, or a rollout is moving traffic: record it (once per quarter
        # hour, not every check) so it is alerted; the next checks try again.
        logger.warning("%s: %s; rollback refused: %s", deployment, reason, exc)
        recent = GuardBreach.objects.filter(
            rollout=rollout,
            action=GuardAction.ROLLBACK_REFUSED,
            at__gt=now - timedelta(minutes=15),
        ).exists()
        if recent:
            return None
        return GuardBreach.objects.create(
            deployment=deployment,
            rollout=rollout,
            version=rollout.version.number,
            rules=breached,
            evidence=evidence,
            action=GuardAction.ROLLBACK_REFUSED,
            message=f"{reason}; rollback refused: {exc}",
        )


def _breach_rolled_back(
    deployment: Deployment,
    rollout: Rollout,
    rollback: Rollout,
    breached: list[str],
    evidence: dict[str, Any],
    reason: str,
) -> GuardBreach:
    logger.warning("%s: %s; rolled back to v%s", deployment, reason, rollback.version.number)
    return GuardBreach.objects.create(
        deployment=deployment,
        rollout=rollout,
        rollback=rollback,
        version=rollout.version.number,
        rules=breached,
        evidence=evidence,
        action=GuardAction.ROLLED_BACK,
        message=f"{reason}; rolled back to v{rollback.version.number}",
    )


def guards_check(*, now: datetime | None = None) -> list[GuardBreach]:
    """Every deployment with a live slot, once."""
    breaches = []
    for deployment in Deployment.objects.exclude(live_slot=""):
        try:
            breach = guards_check_deployment(deployment=deployment, now=now)
        except Exception:  # one broken deployment must not stop the others' guards
            logger.exception("guards of %s failed", deployment)
            continue
        if breach is not None:
            breaches.append(breach)
    return breaches
