"""The figures each guard rule judges, apart from traffic: the sampled inputs (drift and data
quality, one drift window) and the labels (live quality against the previous version's).

``guards.guard_evaluate`` decides with them; ``retrain`` reads ``LABEL_RULES`` to say which
limit a breach crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from deployments.models import Deployment
from monitoring import drift_stats as ds
from monitoring.choices import DriftWindowKind, GuardRule
from monitoring.models import DriftWindow
from monitoring.selectors.metrics import drift_feature_figures
from monitoring.selectors.quality import quality_compute
from monitoring.services.drift import drift_compute_window
from registry.models import ModelVersion

# Data-quality rules: the policy key (``max_`` + the monitoring.data_quality figure it limits)
# and the rule a breach names.
DATA_QUALITY_RULES: dict[str, str] = {
    "max_missing_rate_increase": GuardRule.MISSING_RATE,
    "max_out_of_range_rate": GuardRule.OUT_OF_RANGE,
    "max_new_category_rate": GuardRule.NEW_CATEGORY,
}
# Sampled rows a window needs before the data-quality rules count (payload sampling keeps a
# share of requests, so this is rows the checks saw, not requests served).
DATA_QUALITY_MIN_ROWS = 100
# The previous version's labelled quality is taken over this span before the switch.
LABELLED_BASELINE = timedelta(days=7)


@dataclass(frozen=True)
class LabelRule:
    """A rule on labelled quality: the rule (also the metric of monitoring.selectors.quality
    and the evidence key), the task it applies to, and which way is worse (-1: lower, a drop;
    +1: higher, an increase)."""

    rule: str
    task: str
    worse: int


LABEL_RULES: dict[str, LabelRule] = {
    "max_accuracy_drop": LabelRule(GuardRule.ACCURACY, "classification", -1),
    "max_mae_increase": LabelRule(GuardRule.MAE, "regression", +1),
}


def guard_window(
    deployment: Deployment, version_number: int, start: datetime, end: datetime
) -> DriftWindow | None:
    """The guard's drift window of the version (one per version, updated in place); None
    without a reference sample to compare with."""
    version = ModelVersion.objects.filter(
        model_id=deployment.model_id, number=version_number
    ).first()
    if version is None:
        return None
    return drift_compute_window(
        deployment=deployment, version=version, start=start, end=end, kind=DriftWindowKind.GUARD
    )


def drift_evidence(window: DriftWindow, level: str) -> dict[str, Any]:
    """The features at ``level`` or worse, with their statistics."""
    flagged = {
        f.feature: drift_feature_figures(f)
        for f in window.features.all()
        if ds.worst_status([f.status, level]) == f.status
    }
    return {
        "threshold": level,
        "status": window.status,
        "window_id": window.pk,
        "live_rows": window.live_rows,
        "features": flagged,
        "thresholds": window.thresholds,
    }


def data_quality_evidence(
    window: DriftWindow, key: str, threshold: float, policy: dict[str, Any]
) -> dict[str, Any] | None:
    """The features whose figure for rule ``key`` (monitoring.data_quality's, stored on the
    window) is above ``threshold``, the worst of them, and the rows it was judged on; None
    when the window has fewer sampled rows than ``min_rows`` (too little never trips)."""
    quality = window.data_quality or {}
    rows = int(quality.get("rows") or 0)
    if rows < int(policy.get("min_rows", DATA_QUALITY_MIN_ROWS)):
        return None
    figure = key.removeprefix("max_")
    values = {
        name: rates[figure]
        for name, rates in (quality.get("per_feature") or {}).items()
        if rates.get(figure) is not None
    }
    worst = max(values, key=values.__getitem__, default=None)
    return {
        "value": values[worst] if worst is not None else None,
        "feature": worst,
        "threshold": threshold,
        "rows": rows,
        "window_id": window.pk,
        "features": {name: value for name, value in values.items() if value > threshold},
    }


def labelled_quality(
    deployment: Deployment,
    version_number: int,
    baseline_version: int,
    start: datetime,
    end: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version's live quality over [start, end) and the previous version's over the span
    before the switch (monitoring.selectors.quality): read once for every label rule."""
    live = quality_compute(deployment=deployment, version=version_number, start=start, end=end)
    before = quality_compute(
        deployment=deployment,
        version=baseline_version,
        start=start - LABELLED_BASELINE,
        end=start,
    )
    return live, before


def labelled_evidence(
    rule: LabelRule,
    allowed: float,
    min_labels: int,
    live: dict[str, Any],
    before: dict[str, Any],
) -> dict[str, Any] | None:
    """The live metric of ``rule`` against the previous version's; None when the task is not
    the rule's or either side has too few labels (too little data never trips a guard)."""
    if live.get("task") != rule.task or before.get("task") != rule.task:
        return None
    if live["labelled"] < min_labels or before["labelled"] < min_labels:
        return None
    value = live["metrics"][rule.rule]["value"]
    baseline = before["metrics"][rule.rule]["value"]
    return {
        "value": value,
        "ci95": live["metrics"][rule.rule]["ci95"],
        "labelled": live["labelled"],
        "baseline": baseline,
        "baseline_version": before["version"],
        "baseline_labelled": before["labelled"],
        "threshold": allowed,
        "breached": rule.worse * (value - baseline) > allowed,
    }
