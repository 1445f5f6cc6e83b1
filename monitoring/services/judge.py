"""The canary judge over a deployment's own data: roll-ups and labelled predictions of the
baseline and the canary version over the same window, handed to ``monitoring.judge``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deployments.models import Deployment
from monitoring.judge import ArmTraffic, GuardComparison, Judgement, JudgePolicy, judge
from monitoring.selectors.metrics import TrafficSummary, traffic_by_version
from monitoring.selectors.quality import quality_compute

# How many labelled predictions each arm needs before accuracy takes part in the verdict.
DEFAULT_MIN_LABELS = 100


def _arm(summary: TrafficSummary | None) -> ArmTraffic:
    if summary is None:
        return ArmTraffic(0, 0, None)
    histogram = summary.histogram.tolist() if summary.histogram is not None else None
    return ArmTraffic(summary.requests, summary.errors, histogram)


def _accuracy(
    deployment: Deployment,
    baseline_version: int,
    canary_version: int,
    start: datetime,
    end: datetime,
    policy: dict[str, Any],
) -> GuardComparison:
    min_labels = int(policy.get("min_labels", DEFAULT_MIN_LABELS))
    qualities = [
        quality_compute(deployment=deployment, version=v, start=start, end=end)
        for v in (baseline_version, canary_version)
    ]
    enough = all(
        q.get("task") == "classification" and q.get("labelled", 0) >= min_labels for q in qualities
    )
    baseline, canary = (q["metrics"]["accuracy"]["value"] if enough else None for q in qualities)
    return GuardComparison(
        "accuracy",
        baseline,
        canary,
        float(policy["max_accuracy_drop"]),
        higher_is_worse=False,
        enough_data=enough,
    )


def canary_judge(
    *,
    deployment: Deployment,
    baseline_version: int,
    canary_version: int,
    start: datetime,
    end: datetime,
    policy: dict[str, Any] | None = None,
) -> Judgement:
    """Judge ``canary_version`` against ``baseline_version`` over [start, end).

    ``policy``: the keys of :class:`monitoring.judge.JudgePolicy`, and ``max_accuracy_drop``
    (with ``min_labels``) to make live accuracy a guard metric once labels arrive.
    """
    policy = policy or {}
    traffic = traffic_by_version(deployment=deployment, start=start, end=end)
    guards = []
    if policy.get("max_accuracy_drop") is not None:
        guards.append(_accuracy(deployment, baseline_version, canary_version, start, end, policy))
    return judge(
        _arm(traffic.get(baseline_version)),
        _arm(traffic.get(canary_version)),
        JudgePolicy.from_dict(policy),
        guards,
    )
