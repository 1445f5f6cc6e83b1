"""Drift benchmark: 1,000,000 live rows x 20 numeric features against a 100,000-row reference.

Prints seconds (and the ratio against a plain ``scipy.stats.ks_2samp`` loop over the same data,
in the same run); asserts correctness only, never speed.

Run: python -m devstack test -- -m benchmark -s tests/benchmarks/test_drift_bench.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitoring import drift_stats as ds
from monitoring.services.drift import drift_compare
from monitoring.services.drift_profiles import build_profiles

pytestmark = pytest.mark.benchmark

FEATURES = 20
REFERENCE_ROWS = 100_000
LIVE_ROWS = 1_000_000


def _data():
    rng = np.random.default_rng(42)
    names = [f"f{i:02d}" for i in range(FEATURES)]
    reference = pd.DataFrame(
        {n: rng.normal(i, 1 + i / 10, REFERENCE_ROWS) for i, n in enumerate(names)}
    )
    live = {}
    for i, name in enumerate(names):
        shift = 2 * (1 + i / 10) if i % 5 == 0 else 0.0  # every 5th feature moved by 2 sd
        column = rng.normal(i + shift, 1 + i / 10, LIVE_ROWS)
        if i % 4 == 1:
            column = np.round(column, 1)  # a few features with many ties
        live[name] = column
    return names, reference, live


def test_drift_1m_live_rows_20_features_against_100k_reference():
    names, reference, live = _data()

    started = time.perf_counter()
    profiles = build_profiles(reference)
    profile_s = time.perf_counter() - started

    timings = {}
    for workers in (1, 2):
        drift_compare(profiles, {n: live[n][:1000] for n in names}, workers=workers)  # warm
        started = time.perf_counter()
        results = drift_compare(profiles, live, workers=workers)
        timings[workers] = time.perf_counter() - started

    started = time.perf_counter()
    scipy_results = {n: stats.ks_2samp(reference[n].to_numpy(), live[n]) for n in names}
    scipy_s = time.perf_counter() - started

    for name in names:
        _, result = results[name]
        assert result.ks == pytest.approx(scipy_results[name].statistic, abs=1e-12)
        assert result.ks_pvalue == pytest.approx(scipy_results[name].pvalue, rel=1e-6, abs=1e-300)
        expected = "drift" if int(name[1:]) % 5 == 0 else "ok"
        assert result.status == expected, (name, result.as_dict())

    print()
    print(f"drift: {LIVE_ROWS:,} live rows x {FEATURES} numeric features, ref {REFERENCE_ROWS:,}")
    print(f"  profile the reference once (quantile bins + distinct values): {profile_s:6.3f} s")
    for workers, seconds in timings.items():
        print(
            f"  PSI + KS, all {FEATURES} features, {workers} thread(s):          {seconds:6.3f} s"
            f"  ({scipy_s / seconds:4.1f}x faster than the scipy loop)"
        )
    print(f"  plain scipy.stats.ks_2samp loop (KS only), same data:      {scipy_s:6.3f} s")
    one = ds.numeric_profile(reference["f01"].to_numpy())
    started = time.perf_counter()
    ds.numeric_drift(one, live["f01"])
    one_s = time.perf_counter() - started
    print(f"  one feature (PSI + KS), 1 thread:                          {one_s:6.3f} s")
