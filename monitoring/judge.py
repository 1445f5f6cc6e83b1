"""The canary judge: is the canary worse than its baseline over the same window?

Pure functions over what the gateway's roll-ups hold per version (requests, 5xx, the latency
histogram of ``gateway.metrics``) plus any guard metric the caller computed (drift, cost,
accuracy). Each metric gets one of three verdicts:

``fail``
    the canary is worse by more than the tolerance *and* the difference is significant
    (one-sided, ``alpha``): a real regression, not noise. Aborts the canary.
``pass``
    enough data on both arms and the canary is shown not to be worse by more than the
    tolerance (for the error rate: the upper confidence bound of the difference is within it).
``not_yet``
    anything else, above all too little data. Never a pass: a canary that got no traffic is
    never promoted (Kayenta's known hole is passing when the baseline has no data).

The overall verdict is ``fail`` if any metric fails, ``pass`` if all pass, else ``not_yet``.

Tests, all from scipy.stats:

- error rate: Fisher's exact test when an expected count of the 2x2 table is under 5, else the
  pooled two-proportion z-test; the pass bound is Newcombe's hybrid score interval of the
  difference, built from the two Wilson intervals (``binomtest().proportion_ci``).
- latency: Mann-Whitney U on the two histograms (each request stands for its bucket: the
  roll-ups keep no raw latencies), with the tie correction the bucketing needs; the tolerance
  is on the relative increase of the median, so a significant but trivial shift never fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats

from gateway.metrics import percentile_from_histogram

Verdict = Literal["pass", "fail", "not_yet"]


@dataclass(frozen=True)
class ArmTraffic:
    """One arm's totals over the judged window (a version's roll-ups merged)."""

    requests: int
    errors: int  # 5xx answered by the gateway for this arm
    histogram: Sequence[int] | None = None  # gateway.metrics.BUCKET_COUNT counts


@dataclass(frozen=True)
class GuardComparison:
    """A metric the caller computed for both arms (drift score, cost, accuracy, ...)."""

    name: str
    baseline: float | None
    canary: float | None
    tolerance: float  # how much worse the canary may be, in the metric's unit
    higher_is_worse: bool = True
    enough_data: bool = True  # e.g. min_labels reached on both arms


@dataclass(frozen=True)
class JudgePolicy:
    min_requests: int = 200  # per arm, before any verdict but "not_yet"
    max_error_rate_increase: float = 0.01  # absolute: 0.01 = one point more 5xx
    max_latency_increase: float = 0.25  # relative, on the median
    alpha: float = 0.01  # one-sided significance of a failure; the pass bound is 1 - alpha

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> JudgePolicy:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class MetricVerdict:
    metric: str
    verdict: Verdict
    reason: str
    baseline: float | None = None
    canary: float | None = None
    tolerance: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    test: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    bound: float | None = None  # the upper confidence bound the pass rests on, if any


@dataclass
class Judgement:
    verdict: Verdict
    metrics: list[MetricVerdict]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready evidence, stored on the rollout and in the audit log."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        return {
            "verdict": self.verdict,
            "metrics": [
                {key: clean(value) for key, value in asdict(metric).items()}
                for metric in self.metrics
            ],
        }


def _wilson(successes: int, total: int, confidence: float) -> tuple[float, float]:
    interval = stats.binomtest(successes, total).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return float(interval.low), float(interval.high)


def _error_rate(baseline: ArmTraffic, canary: ArmTraffic, policy: JudgePolicy) -> MetricVerdict:
    counts = {
        "baseline_requests": baseline.requests,
        "baseline_errors": baseline.errors,
        "canary_requests": canary.requests,
        "canary_errors": canary.errors,
    }
    tolerance = policy.max_error_rate_increase
    if min(baseline.requests, canary.requests) < policy.min_requests:
        return MetricVerdict(
            "error_rate",
            "not_yet",
            f"fewer than {policy.min_requests} requests on an arm",
            tolerance=tolerance,
            counts=counts,
        )
    p_b = baseline.errors / baseline.requests
    p_c = canary.errors / canary.requests
    table = [
        [canary.errors, canary.requests - canary.errors],
        [baseline.errors, baseline.requests - baseline.errors],
    ]
    total = baseline.requests + canary.requests
    errors = baseline.errors + canary.errors
    smallest_expected = min(
        row * col / total
        for row in (canary.requests, baseline.requests)
        for col in (errors, total - errors)
    )
    if smallest_expected < 5:
        test = "fisher_exact"
        statistic, p_value = stats.fisher_exact(table, alternative="greater")
    else:
        test = "two_proportion_z"
        pooled = errors / total
        se = math.sqrt(pooled * (1 - pooled) * (1 / canary.requests + 1 / baseline.requests))
        statistic = (p_c - p_b) / se
        p_value = float(stats.norm.sf(statistic))
    # Newcombe's hybrid score interval of p_c - p_b; its upper end at 1 - alpha one-sided.
    confidence = 1 - 2 * policy.alpha
    _, high_c = _wilson(canary.errors, canary.requests, confidence)
    low_b, _ = _wilson(baseline.errors, baseline.requests, confidence)
    upper = (p_c - p_b) + math.sqrt((high_c - p_c) ** 2 + (p_b - low_b) ** 2)
    evidence = MetricVerdict(
        "error_rate",
        "not_yet",
        f"the difference may still exceed {tolerance:.2%} (bound {upper:.2%}): more requests",
        baseline=p_b,
        canary=p_c,
        tolerance=tolerance,
        statistic=float(statistic),
        p_value=float(p_value),
        test=test,
        counts=counts,
        bound=upper,
    )
    if p_c - p_b > tolerance and p_value < policy.alpha:
        return replace(
            evidence,
            verdict="fail",
            reason=f"canary 5xx rate {p_c:.2%} against {p_b:.2%}: more than {tolerance:.2%} "
            f"higher (p = {p_value:.2g})",
        )
    if upper <= tolerance:
        return replace(
            evidence,
            verdict="pass",
            reason=f"5xx rate at most {upper:.2%} above the baseline "
            f"({1 - policy.alpha:.0%} bound)",
        )
    return evidence


def _expand(histogram: Sequence[int]) -> np.ndarray:
    """One value per request: its bucket index (the ranks are all Mann-Whitney needs)."""
    counts = np.asarray(histogram, dtype=np.int64)
    return np.repeat(np.arange(counts.size), counts)


def _latency(baseline: ArmTraffic, canary: ArmTraffic, policy: JudgePolicy) -> MetricVerdict:
    tolerance = policy.max_latency_increase
    if baseline.histogram is None or canary.histogram is None:
        return MetricVerdict("latency", "not_yet", "no latency histogram", tolerance=tolerance)
    base_values, canary_values = _expand(baseline.histogram), _expand(canary.histogram)
    counts = {
        "baseline_requests": int(base_values.size),
        "canary_requests": int(canary_values.size),
    }
    if min(base_values.size, canary_values.size) < policy.min_requests:
        return MetricVerdict(
            "latency",
            "not_yet",
            f"fewer than {policy.min_requests} timed requests on an arm",
            tolerance=tolerance,
            counts=counts,
        )
    base_median = percentile_from_histogram(list(baseline.histogram), 0.5)
    canary_median = percentile_from_histogram(list(canary.histogram), 0.5)
    result = stats.mannwhitneyu(canary_values, base_values, alternative="greater")
    increase = (
        (canary_median - base_median) / base_median
        if base_median and canary_median is not None
        else 0.0
    )
    evidence = MetricVerdict(
        "latency",
        "pass",
        f"median {canary_median:.2f} ms against {base_median:.2f} ms "
        f"({increase:+.0%}, tolerance {tolerance:.0%})",
        baseline=base_median,
        canary=canary_median,
        tolerance=tolerance,
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        test="mann_whitney_u",
        counts=counts,
    )
    if increase > tolerance and result.pvalue < policy.alpha:
        return replace(
            evidence,
            verdict="fail",
            reason=f"canary median {canary_median:.2f} ms against {base_median:.2f} ms: "
            f"{increase:.0%} slower (p = {result.pvalue:.2g})",
        )
    return evidence


def _guard(comparison: GuardComparison) -> MetricVerdict:
    evidence = MetricVerdict(
        comparison.name,
        "not_yet",
        "too little data on an arm",
        baseline=comparison.baseline,
        canary=comparison.canary,
        tolerance=comparison.tolerance,
    )
    if not comparison.enough_data or comparison.baseline is None or comparison.canary is None:
        return evidence
    worse_by = comparison.canary - comparison.baseline
    if not comparison.higher_is_worse:
        worse_by = -worse_by
    compared = f"{comparison.name} {comparison.canary:.4g} against {comparison.baseline:.4g}"
    if worse_by > comparison.tolerance:
        return replace(
            evidence,
            verdict="fail",
            reason=f"{compared}: worse by {worse_by:.4g}, tolerance {comparison.tolerance:.4g}",
        )
    return replace(evidence, verdict="pass", reason=compared)


def judge(
    baseline: ArmTraffic,
    canary: ArmTraffic,
    policy: JudgePolicy | None = None,
    guards: Sequence[GuardComparison] = (),
) -> Judgement:
    """Compare ``canary`` to ``baseline`` over the same window (see the module docstring)."""
    policy = policy or JudgePolicy()
    metrics = [
        _error_rate(baseline, canary, policy),
        _latency(baseline, canary, policy),
        *(_guard(g) for g in guards),
    ]
    verdicts = {m.verdict for m in metrics}
    overall: Verdict = (
        "fail" if "fail" in verdicts else "pass" if verdicts == {"pass"} else "not_yet"
    )
    return Judgement(overall, metrics)
