"""The canary judge on simulated traffic: fails regressions fast, passes healthy canaries,
never promotes on too little data."""

import json

import numpy as np
import pytest

from gateway.metrics import BUCKET_COUNT, bucket_index
from monitoring.judge import ArmTraffic, GuardComparison, JudgePolicy, judge

STEP = 100  # requests per arm between two looks of the judge


def _histogram(latencies_ms: np.ndarray) -> list[int]:
    counts = np.zeros(BUCKET_COUNT, dtype=np.int64)
    np.add.at(counts, [bucket_index(float(ms)) for ms in latencies_ms], 1)
    return counts.tolist()


class _Arm:
    """A stream of requests: each a 5xx with probability ``error_rate``, latency log-normal."""

    def __init__(self, rng, error_rate: float, median_ms: float = 20.0):
        self.rng, self.error_rate, self.median_ms = rng, error_rate, median_ms
        self.requests = self.errors = 0
        self.latencies: list[np.ndarray] = []

    def serve(self, n: int) -> None:
        self.requests += n
        self.errors += int((self.rng.random(n) < self.error_rate).sum())
        self.latencies.append(self.median_ms * np.exp(self.rng.normal(0, 0.3, n)))

    def traffic(self) -> ArmTraffic:
        return ArmTraffic(self.requests, self.errors, _histogram(np.concatenate(self.latencies)))


def _ramp(seed: int, canary_error_rate: float, canary_median_ms: float = 20.0, limit=10_000):
    """Looks every STEP requests per arm; (verdict, requests per arm) at the first decision."""
    rng = np.random.default_rng(seed)
    baseline, canary = _Arm(rng, 0.005), _Arm(rng, canary_error_rate, canary_median_ms)
    while baseline.requests < limit:
        baseline.serve(STEP)
        canary.serve(STEP)
        result = judge(baseline.traffic(), canary.traffic())
        if result.verdict != "not_yet":
            return result, baseline.requests
    return result, baseline.requests


def test_two_points_more_5xx_fail_within_a_bounded_number_of_requests():
    decided = []
    for seed in range(20):
        result, requests = _ramp(seed, canary_error_rate=0.025)
        assert result.verdict == "fail", (seed, result.as_dict())
        [error_rate] = [m for m in result.metrics if m.metric == "error_rate"]
        assert error_rate.verdict == "fail" and error_rate.p_value < 0.01
        decided.append(requests)
    print(f"\n+2 points of 5xx (0.5 % -> 2.5 %): failed after {sorted(decided)} requests per arm")
    assert max(decided) <= 3_000


def test_a_healthy_canary_passes_and_never_fails():
    passed = []
    for seed in range(20):
        result, requests = _ramp(seed, canary_error_rate=0.005)
        assert result.verdict == "pass", (seed, result.as_dict())
        passed.append(requests)
    print(f"\nhealthy canary: passed after {sorted(passed)} requests per arm")


def test_no_traffic_or_no_baseline_is_never_a_pass():
    empty = ArmTraffic(0, 0, [0] * BUCKET_COUNT)
    busy = ArmTraffic(5_000, 0, [0] * 10 + [5_000] + [0] * (BUCKET_COUNT - 11))
    for baseline, canary in ((empty, empty), (busy, empty), (empty, busy)):
        result = judge(baseline, canary)
        assert result.verdict == "not_yet"
        assert {m.verdict for m in result.metrics} == {"not_yet"}
    assert judge(busy, ArmTraffic(5_000, 0, None)).verdict == "not_yet"  # untimed


def test_a_slower_canary_fails_on_latency_and_a_trivial_shift_does_not():
    result, _ = _ramp(3, canary_error_rate=0.005, canary_median_ms=30.0)
    [latency] = [m for m in result.metrics if m.metric == "latency"]
    assert result.verdict == "fail" and latency.verdict == "fail"
    assert latency.test == "mann_whitney_u" and latency.p_value < 0.01
    assert latency.canary > latency.baseline * 1.25

    rng = np.random.default_rng(5)
    baseline, canary = _Arm(rng, 0.0), _Arm(rng, 0.0, median_ms=21.0)  # 5 %: significant at
    baseline.serve(20_000)  # this size, but under the 25 % tolerance
    canary.serve(20_000)
    [latency] = [m for m in judge(baseline.traffic(), canary.traffic()).metrics[1:2]]
    assert latency.p_value < 0.01 and latency.verdict == "pass"


def test_the_exact_test_for_few_errors_and_the_z_test_for_many():
    histogram = [0] * 5 + [1_000] + [0] * (BUCKET_COUNT - 6)
    few = judge(ArmTraffic(1_000, 0, histogram), ArmTraffic(1_000, 3, histogram)).metrics[0]
    assert few.test == "fisher_exact"
    many = judge(
        ArmTraffic(100_000, 500, histogram), ArmTraffic(100_000, 2_600, histogram)
    ).metrics[0]
    assert many.test == "two_proportion_z" and many.verdict == "fail"
    assert many.counts == {
        "baseline_requests": 100_000,
        "baseline_errors": 500,
        "canary_requests": 100_000,
        "canary_errors": 2_600,
    }


@pytest.mark.parametrize(
    ("comparison", "verdict"),
    [
        (GuardComparison("accuracy", 0.91, 0.80, 0.05, higher_is_worse=False), "fail"),
        (GuardComparison("accuracy", 0.91, 0.89, 0.05, higher_is_worse=False), "pass"),
        (GuardComparison("accuracy", 0.91, 0.50, 0.05, False, enough_data=False), "not_yet"),
        (GuardComparison("drift_psi", 0.02, 0.40, 0.1), "fail"),
        (GuardComparison("cost_per_prediction", None, 0.001, 0.0001), "not_yet"),
    ],
)
def test_guard_metrics_join_the_verdict(comparison, verdict):
    histogram = [0] * 5 + [2_000] + [0] * (BUCKET_COUNT - 6)
    arm = ArmTraffic(2_000, 0, histogram)
    result = judge(arm, arm, JudgePolicy(), guards=[comparison])
    assert result.metrics[-1].verdict == verdict
    assert result.verdict == ("pass" if verdict == "pass" else verdict)
    json.dumps(result.as_dict())  # the evidence is stored as JSON


def test_policy_from_a_stored_document_ignores_unknown_keys():
    policy = JudgePolicy.from_dict({"min_requests": 50, "alpha": 0.05, "steps": [5, 50]})
    assert (policy.min_requests, policy.alpha, policy.max_error_rate_increase) == (50, 0.05, 0.01)
