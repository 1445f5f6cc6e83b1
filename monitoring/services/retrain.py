"""Retrain requests: what a quality guard or a drift window that breached its policy asks for.

A guard breach of a model-quality rule (``GuardRule`` in ``RETRAIN_RULES``) or a scheduled
drift window whose inputs drifted becomes one ``retrain.requested`` alert, delivered like every
alert by the signed webhooks of ``monitoring.services.webhooks`` (an endpoint picks it by its
``kinds``). The payload says which version, which metric (the figure that crossed its limit:
``accuracy``, ``mae``, or a drift statistic ``psi``/``ks``/``js`` of one feature), the measured
value, the threshold it crossed, the window, the evidence and a suggested action.

Once per breach: a guard's request is keyed by the rollout it guarded and the metric (a refused
rollback is recorded again every quarter hour; the request is not), a drift window's by its
span. Data-quality rules request no retrain: broken inputs are the clients' to fix, and a model
retrained on them learns the breakage. On-demand windows request none either: they are
someone looking at the same traffic the scheduled windows judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deployments.models import Deployment
from monitoring import drift_stats as ds
from monitoring.choices import DriftStatus, DriftWindowKind, GuardAction, GuardRule
from monitoring.models import DriftWindow, GuardBreach
from monitoring.selectors.metrics import drift_feature_figures
from monitoring.services.guard_evidence import LABEL_RULES

# Labelled-quality rules (guard_evidence.LABEL_RULES) by rule: their policy key and direction.
_QUALITY_LIMITS: dict[str, tuple[str, int]] = {
    rule.rule: (key, rule.worse) for key, rule in LABEL_RULES.items()
}
# Guard rules whose breach says the model no longer fits the world, and their evidence key.
RETRAIN_RULES: dict[str, str] = {
    **{rule: rule for rule in _QUALITY_LIMITS},
    GuardRule.DRIFT: "drift",
}
_LEVEL: dict[str, int] = {DriftStatus.WARN: 1, DriftStatus.DRIFT: 2}


@dataclass
class RetrainRequest:
    key: str
    deployment: Deployment
    message: str
    payload: dict[str, Any]


def retrain_requests(*, since: datetime) -> list[RetrainRequest]:
    """The retrain requests of guard breaches and scheduled drift windows since ``since``."""
    found: list[RetrainRequest] = []
    for breach in GuardBreach.objects.select_related("deployment", "rollback__version").filter(
        at__gte=since
    ):
        for rule in breach.rules:
            if rule in RETRAIN_RULES:
                request = _from_guard(breach, rule)
                if request is not None:
                    found.append(request)
    for window in DriftWindow.objects.select_related("deployment").filter(
        kind=DriftWindowKind.SCHEDULED, status=DriftStatus.DRIFT, computed_at__gte=since
    ):
        request = _from_drift_window(window)
        if request is not None:
            found.append(request)
    return found


def _from_guard(breach: GuardBreach, rule: str) -> RetrainRequest | None:
    evidence = breach.evidence.get(RETRAIN_RULES[rule]) or {}
    window = breach.evidence.get("window") or {}
    if rule == GuardRule.DRIFT:
        level = _LEVEL.get(str(evidence.get("threshold")), 2)
        figures = _strongest(evidence.get("features") or {}, evidence.get("thresholds"), level)
        if figures is None:
            return None
        metric = figures
        policy = {"drift": evidence.get("threshold")}
    else:
        key, worse = _QUALITY_LIMITS[rule]
        metric = _quality_figures(rule, evidence, worse)
        policy = {key: evidence.get("threshold")}
    rolled_back = breach.action == GuardAction.ROLLED_BACK
    back_to = breach.rollback.version.number if breach.rollback is not None else None
    # The rollout, not the breach: a refused rollback is recorded again while it stays live.
    guarded = f"rollout-{breach.rollout_id}" if breach.rollout_id else f"breach-{breach.pk}"
    source = {
        "kind": "guard",
        "guard_breach": breach.pk,
        "rollout": breach.rollout_id,
        "rule": rule,
        "policy": policy,
        "rolled_back": rolled_back,
    }
    return _request(
        key=f"retrain:{breach.deployment_id}:v{breach.version}:{guarded}:{metric['metric']}",
        deployment=breach.deployment,
        version=breach.version,
        metric=metric,
        window=window,
        evidence=evidence,
        source=source,
        action=_action(breach.version, back_to=back_to, drifted=_drifted(rule, evidence)),
    )


def _drifted(rule: str, evidence: dict[str, Any]) -> list[str] | None:
    return sorted(evidence.get("features") or {}) if rule == GuardRule.DRIFT else None


def _quality_figures(rule: str, evidence: dict[str, Any], worse: int) -> dict[str, Any]:
    """The live value and the limit it crossed: the previous version's value moved the way
    that is worse by the allowed change (accuracy 0.9 less a drop of 0.1: 0.8)."""
    baseline, allowed = evidence.get("baseline"), evidence.get("threshold")
    limit = baseline + worse * allowed if baseline is not None and allowed is not None else None
    return {
        "metric": rule,
        "feature": None,
        "value": evidence.get("value"),
        "threshold": limit,
        "baseline": baseline,
        "baseline_version": evidence.get("baseline_version"),
        # "previous version" or "reference labels" (guard_evidence.labelled_evidence).
        "baseline_source": evidence.get("baseline_source"),
    }


def _from_drift_window(window: DriftWindow) -> RetrainRequest | None:
    features = {
        f.feature: drift_feature_figures(f)
        for f in window.features.filter(status=DriftStatus.DRIFT)
    }
    metric = _strongest(features, window.thresholds, 2)
    if metric is None:
        return None
    span = {"start": window.start.isoformat(), "end": window.end.isoformat()}
    return _request(
        # Scheduled windows are keyed by their span: recomputing one replaces the same row.
        key=(
            f"retrain:{window.deployment_id}:v{window.version}:drift:"
            f"{int(window.start.timestamp())}-{int(window.end.timestamp())}"
        ),
        deployment=window.deployment,
        version=window.version,
        metric=metric,
        window=span,
        evidence={
            "live_rows": window.live_rows,
            "features": features,
            "thresholds": window.thresholds,
        },
        source={"kind": "drift_window", "drift_window": window.pk},
        action=_action(window.version, back_to=None, drifted=sorted(features)),
    )


def _strongest(
    features: dict[str, dict[str, Any]], thresholds: dict[str, float] | None, level: int
) -> dict[str, Any] | None:
    """The statistic furthest past its limit among the features at ``level`` or above
    (drift_stats decides which statistics count, as it did for the status)."""
    limits = {**ds.DEFAULT_THRESHOLDS, **(thresholds or {})}
    suffix = "drift" if level >= 2 else "warn"
    best: dict[str, Any] | None = None
    for name, figures in sorted(features.items()):
        for stat, reached in ds.statistic_levels(figures, limits).items():
            limit = limits[f"{stat}_{suffix}"]
            if reached < level or not limit:
                continue
            if best is None or figures[stat] / limit > best["value"] / best["threshold"]:
                best = {"metric": stat, "feature": name, "value": figures[stat], "threshold": limit}
    return best


def _action(version: int, *, back_to: int | None, drifted: list[str] | None) -> str:
    """What to do about it, in words (the alert's text and the payload's suggested_action)."""
    done = f"v{version} was rolled back to v{back_to}; " if back_to is not None else ""
    if drifted is None:
        return (
            f"{done}retrain on recent labelled data (this window's labels included), then roll "
            "the new version out as a canary under the same guard"
        )
    return (
        f"{done}retrain on recent traffic (the inputs drifted: {', '.join(drifted)}), check "
        "the labels' accuracy first, and compare it with the live version before rolling out"
    )


def _request(
    *,
    key: str,
    deployment: Deployment,
    version: int,
    metric: dict[str, Any],
    window: dict[str, Any],
    evidence: dict[str, Any],
    source: dict[str, Any],
    action: str,
) -> RetrainRequest:
    what = metric["metric"] + (f" of {metric['feature']}" if metric.get("feature") else "")
    when = _span_text(window)
    value, limit = metric.get("value"), metric.get("threshold")
    if value is None:
        figures = "breached"
    elif limit is None:
        figures = f"{value:.4g}"
    else:
        figures = f"{value:.4g} against the limit {limit:.4g}"
    message = (
        f"{deployment}: retrain requested for v{version}: {what} {figures} over {when}; {action}"
    )
    payload = {
        "deployment": deployment.name,
        "version": version,
        **metric,
        "window": window,
        "evidence": evidence,
        "suggested_action": action,
        "source": source,
    }
    return RetrainRequest(key=key, deployment=deployment, message=message, payload=payload)


def _span_text(window: dict[str, Any]) -> str:
    try:
        start = datetime.fromisoformat(str(window["start"]))
        end = datetime.fromisoformat(str(window["end"]))
    except (KeyError, ValueError):
        return "an unknown window"
    return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC"
