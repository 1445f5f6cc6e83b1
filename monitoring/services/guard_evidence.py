"""The figures each guard rule judges, apart from traffic: the sampled inputs (drift and data
quality, one drift window) and the labels (live quality against the previous version's, or
against the version's own on its labelled reference rows when the previous has too few).

``guards.guard_evaluate`` decides with them; ``retrain`` reads ``LABEL_RULES`` to say which
limit a breach crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard

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


@dataclass(frozen=True)
class LabelledQuality:
    """What the label rules compare: the version's live quality, the previous version's over
    the span before the switch (None without one), and the version's own quality on its
    labelled reference rows (``ModelVersion.baseline_quality``, {} without labels)."""

    live: dict[str, Any]
    before: dict[str, Any] | None
    reference: dict[str, Any]


def labelled_quality(
    deployment: Deployment,
    version_number: int,
    baseline_version: int | None,
    start: datetime,
    end: datetime,
) -> LabelledQuality:
    """Read once for every label rule (monitoring.selectors.quality)."""
    live = quality_compute(deployment=deployment, version=version_number, start=start, end=end)
    before = (
        quality_compute(
            deployment=deployment,
            version=baseline_version,
            start=start - LABELLED_BASELINE,
            end=start,
        )
        if baseline_version is not None
        else None
    )
    reference = (
        ModelVersion.objects.filter(model_id=deployment.model_id, number=version_number)
        .values_list("baseline_quality", flat=True)
        .first()
    )
    return LabelledQuality(live, before, reference or {})


def _enough(
    quality: dict[str, Any] | None, rule: LabelRule, min_labels: int
) -> TypeGuard[dict[str, Any]]:
    return (
        quality is not None
        and quality.get("task") == rule.task
        and int(quality.get("labelled") or 0) >= min_labels
        and bool(quality.get("metrics"))
    )


def labelled_evidence(
    rule: LabelRule, allowed: float, min_labels: int, quality: LabelledQuality
) -> dict[str, Any] | None:
    """The live metric of ``rule`` against the previous version's live one, or, when that has
    too few labels, against the version's own on its labelled reference rows; None when the
    task is not the rule's or no side has enough labels (too little data never trips)."""
    live, before, reference = quality.live, quality.before, quality.reference
    if not _enough(live, rule, min_labels):
        return None
    if _enough(before, rule, min_labels):
        baseline_figures = {
            "baseline": before["metrics"][rule.rule]["value"],
            "baseline_source": "previous version",
            "baseline_version": before["version"],
            "baseline_labelled": before["labelled"],
        }
    elif _enough(reference, rule, min_labels):
        # A first version, or labels that arrive only after the switch: what the version
        # scored on its reference labels at validation is the best baseline there is.
        baseline_figures = {
            "baseline": reference["metrics"][rule.rule]["value"],
            "baseline_source": "reference labels",
            "baseline_version": live["version"],
            "baseline_labelled": reference["labelled"],
            "label_column": reference.get("label_column"),
        }
    else:
        return None
    value = live["metrics"][rule.rule]["value"]
    return {
        "value": value,
        "ci95": live["metrics"][rule.rule]["ci95"],
        "labelled": live["labelled"],
        **baseline_figures,
        "threshold": allowed,
        "breached": rule.worse * (value - baseline_figures["baseline"]) > allowed,
    }
