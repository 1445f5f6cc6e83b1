"""The canary judge over a deployment's own data: roll-ups, labelled predictions, resource
samples and drift of the baseline and the canary version over the same window, handed to
``monitoring.judge``.

Guard metrics, each only when the plan's ``judge`` names its tolerance, each "not yet" while an
arm lacks the data (never a pass):

========================= =======================================================================
``max_accuracy_drop``     live accuracy (labelled predictions of a classifier), absolute
``max_mae_increase``      live mean absolute error (labelled predictions of a regressor), absolute
``max_cost_increase``     cost per prediction (resource samples), relative to the baseline's
``max_drift_increase``    the worst feature's drift score (PSI, else Jensen-Shannon) against each
                          version's reference, absolute
========================= =======================================================================

``min_labels`` (100) labelled predictions per arm before accuracy or MAE counts. Input data
quality (missing values, new categories) is not judged: both arms see the same requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deployments.models import Deployment
from monitoring.judge import ArmTraffic, GuardComparison, Judgement, JudgePolicy, judge
from monitoring.selectors.metrics import (
    TrafficSummary,
    cost_summary,
    prices_for,
    resources_by_version,
    traffic_aligned,
)
from monitoring.selectors.quality import quality_compute
from monitoring.services.guard_evidence import LABEL_RULES, guard_window

# How many labelled predictions each arm needs before accuracy takes part in the verdict.
DEFAULT_MIN_LABELS = 100


def _arm(summary: TrafficSummary | None) -> ArmTraffic:
    if summary is None:
        return ArmTraffic(0, 0, None)
    histogram = summary.histogram.tolist() if summary.histogram is not None else None
    return ArmTraffic(summary.requests, summary.errors, histogram)


class _Window:
    """What the guard metrics compare: one deployment, both versions, one window."""

    def __init__(
        self,
        deployment: Deployment,
        versions: tuple[int, int],
        start: datetime,
        end: datetime,
        traffic: dict[int, TrafficSummary],
    ) -> None:
        self.deployment, self.versions = deployment, versions
        self.start, self.end, self.traffic = start, end, traffic

    def labelled(self, key: str, policy: dict[str, Any]) -> GuardComparison:
        """The label rule the plan's ``key`` names (the guards' table: one meaning of each)."""
        rule = LABEL_RULES[key]
        metric, task = str(rule.rule), rule.task
        min_labels = int(policy.get("min_labels", DEFAULT_MIN_LABELS))
        qualities = [
            quality_compute(deployment=self.deployment, version=v, start=self.start, end=self.end)
            for v in self.versions
        ]
        enough = all(
            q.get("task") == task and q.get("labelled", 0) >= min_labels for q in qualities
        )
        baseline, canary = (q["metrics"][metric]["value"] if enough else None for q in qualities)
        return GuardComparison(
            metric,
            baseline,
            canary,
            float(policy[key]),
            higher_is_worse=rule.worse > 0,
            enough_data=enough,
        )

    def cost(self, policy: dict[str, Any]) -> GuardComparison:
        resources = resources_by_version(deployment=self.deployment, start=self.start, end=self.end)
        prices = prices_for(self.deployment)
        baseline, canary = (
            cost_summary(
                resources.get(v),
                self.traffic[v].predictions if v in self.traffic else 0,
                prices,
            )["cost_per_prediction"]
            for v in self.versions
        )
        relative = float(policy["max_cost_increase"])
        return GuardComparison(
            "cost_per_prediction",
            baseline,
            canary,
            # The tolerance is relative to the baseline's cost; the verdict compares absolutes.
            relative * baseline if baseline is not None else relative,
            enough_data=baseline is not None and canary is not None,
        )

    def drift(self, policy: dict[str, Any]) -> GuardComparison:
        baseline, canary = (self._worst_drift(v) for v in self.versions)
        return GuardComparison(
            "drift",
            baseline,
            canary,
            float(policy["max_drift_increase"]),
            enough_data=baseline is not None and canary is not None,
        )

    def _worst_drift(self, number: int) -> float | None:
        window = guard_window(self.deployment, number, self.start, self.end)
        if window is None:
            return None  # no reference sample: nothing to drift from
        scores = [
            score
            for f in window.features.all()
            if (score := f.psi if f.psi is not None else f.js) is not None
        ]
        return max(scores) if scores else None


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

    ``policy``: the keys of :class:`monitoring.judge.JudgePolicy` and the guard metrics' of the
    module docstring.
    """
    policy = policy or {}
    # The cost guard divides the window's resources by all its predictions; the error and
    # latency comparison takes only the minutes in which the canary answered, on both arms.
    traffic, aligned = traffic_aligned(
        deployment=deployment, start=start, end=end, to_version=canary_version
    )
    window = _Window(deployment, (baseline_version, canary_version), start, end, traffic)
    guards = [window.labelled(key, policy) for key in LABEL_RULES if policy.get(key) is not None]
    if policy.get("max_cost_increase") is not None:
        guards.append(window.cost(policy))
    if policy.get("max_drift_increase") is not None:
        guards.append(window.drift(policy))
    return judge(
        _arm(aligned.get(baseline_version)),
        _arm(aligned.get(canary_version)),
        JudgePolicy.from_dict(policy),
        guards,
    )
