"""Drift statistics against scipy, profiles built once, windows from the sample stream."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from scipy import stats
from scipy.spatial.distance import jensenshannon

from monitoring import drift_stats as ds
from monitoring.choices import DriftWindowKind
from monitoring.models import DriftFeature, DriftProfile, DriftWindow, MonitoringPolicy
from monitoring.services import drift_compute_now, drift_profile_ensure, drift_windows_due
from monitoring.services.drift import drift_compare
from monitoring.services.drift_profiles import build_profiles, samples_read
from tests.models import training_frame
from tests.monitoring.conftest import stream_samples


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, n, shift: rng.normal(shift, 1, n),
        lambda rng, n, shift: rng.poisson(3 + shift, n).astype(float),  # many ties
        lambda rng, n, shift: np.round(rng.normal(shift, 1, n), 1),
        lambda rng, n, shift: rng.integers(0, 3 + int(shift * 2), n).astype(float),
    ],
)
def test_ks_statistic_and_pvalue_match_scipy_exactly(draw):
    rng = np.random.default_rng(11)
    for _ in range(25):
        reference = draw(rng, int(rng.integers(1, 400)), 0.0)
        live = draw(rng, int(rng.integers(1, 3000)), float(rng.choice([0.0, 0.3])))
        statistic, pvalue = ds.ks_against_profile(ds.numeric_profile(reference), np.sort(live))
        expected = stats.ks_2samp(reference, live, method="asymp")
        assert statistic == pytest.approx(expected.statistic, abs=1e-12)
        assert pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)


def test_psi_bins_come_from_reference_quantiles_and_match_a_direct_binning():
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, 5000)
    profile = ds.numeric_profile(reference, bins=10)
    assert profile.edges.size == 9
    assert np.all(np.abs(profile.ref_bin_counts - 500) <= 1)  # quantile bins are equal-mass
    live = rng.normal(0.5, 1, 20000)
    counts = ds.live_bin_counts(profile, np.sort(live))
    direct = np.histogram(live, bins=[-np.inf, *profile.edges, np.inf])[0]
    # np.histogram bins are [a, b) and ours (a, b]: equal for continuous data.
    assert counts.tolist() == direct.tolist()
    p, q = profile.ref_bin_counts / 5000, counts / 20000
    assert ds.psi(profile.ref_bin_counts, counts) == pytest.approx(np.sum((q - p) * np.log(q / p)))


def test_a_two_sigma_shift_is_drift_and_the_same_distribution_is_ok():
    rng = np.random.default_rng(5)
    profile = ds.numeric_profile(rng.normal(40, 10, 200))
    shifted = ds.numeric_drift(profile, rng.normal(60, 10, 2000), min_rows=100)
    same = ds.numeric_drift(profile, rng.normal(40, 10, 2000), min_rows=100)
    assert shifted.status == "drift" and shifted.psi > 1 and shifted.ks > 0.5
    assert same.status == "ok" and same.psi < 0.1
    assert ds.numeric_drift(profile, rng.normal(40, 10, 50), min_rows=100).status == "no_data"


def test_categorical_drift_uses_an_other_bucket_chi_square_and_jensen_shannon():
    reference = ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5
    profile = ds.categorical_profile(reference, max_categories=3)
    assert profile.categories == ["a", "b", "c"] and profile.ref_counts.tolist() == [50, 30, 15, 5]
    live = ["a"] * 200 + ["b"] * 100 + ["z"] * 700  # an unseen category lands in "other"
    counts, present, total = ds.categorical_counts(profile, live)
    assert counts.tolist() == [200, 100, 0, 700] and present == total == 1000
    result = ds.categorical_drift(profile, live)
    chi2 = stats.chi2_contingency(np.array([[50, 30, 15, 5], [200, 100, 0, 700]]), correction=False)
    assert result.chi2 == pytest.approx(chi2.statistic)
    assert result.chi2_pvalue == pytest.approx(chi2.pvalue)
    assert result.js == pytest.approx(
        jensenshannon(np.array([50, 30, 15, 5]) / 100, np.array([200, 100, 0, 700]) / 1000, base=2)
    )
    assert result.status == "drift"
    assert (
        ds.categorical_drift(profile, ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["q"] * 5).status
        == "ok"
    )


def test_profiles_survive_storage_and_compare_the_same():
    frame, _ = training_frame(n=500, seed=1)
    frame["plan"] = np.where(frame["score"] > 0.5, "gold", "basic")
    profiles = build_profiles(frame)
    described, blob = ds.profiles_to_storage(profiles)
    restored = ds.profiles_from_storage(json.loads(json.dumps(described)), blob)
    live_frame, _ = training_frame(n=3000, seed=2)
    live_frame["plan"] = "gold"
    columns = {c: live_frame[c].to_numpy() for c in live_frame.columns}
    before = drift_compare(profiles, columns)
    after = drift_compare(restored, columns, workers=1)
    assert {k: v[1].as_dict() for k, v in before.items()} == {
        k: v[1].as_dict() for k, v in after.items()
    }
    assert before["plan"][0] == "categorical" and before["plan"][1].status == "drift"
    assert before["age"][1].status == "ok"


def test_the_reference_is_profiled_once_per_version(versions):
    version = versions[1]
    profile = drift_profile_ensure(version=version)
    again = drift_profile_ensure(version=version)
    assert profile.pk == again.pk and profile.created_at == again.created_at
    assert [f["name"] for f in profile.features] == ["age", "income", "visits", "score"]
    assert {f["kind"] for f in profile.features} == {"numeric"}
    assert DriftProfile.objects.count() == 1


def _sample_traffic(settings, deployment, *, version, rows, shift_age=0.0, seed=0, per_request=50):
    """Real gateway sampler writing the stream, as the gateway would."""
    frame, _ = training_frame(n=rows, seed=seed)
    frame["age"] = frame["age"] + shift_age
    records = frame.to_dict(orient="records")
    return stream_samples(settings, deployment.name, version, records, per_request=per_request)


def test_shifted_feature_is_flagged_from_the_sample_stream_and_others_stay_ok(
    deployment, monitoring_redis, settings
):
    written = _sample_traffic(settings, deployment, version=2, rows=2000, shift_age=20.0)
    assert written == 40
    samples = samples_read(
        deployment=deployment.name,
        start=timezone.now() - timezone.timedelta(minutes=5),
        end=timezone.now() + timezone.timedelta(seconds=1),
    )
    assert len(samples[2].records) == 2000

    [window] = drift_compute_now(deployment=deployment, seconds=600)
    statuses = dict(window.features.values_list("feature", "status"))

    assert statuses == {"age": "drift", "income": "ok", "visits": "ok", "score": "ok"}
    assert window.status == "drift" and window.live_rows == 2000
    assert window.kind == DriftWindowKind.ON_DEMAND
    age = window.features.get(feature="age")
    assert age.psi > 0.25 and age.ks > 0.5 and age.ks_pvalue < 1e-6


def test_recomputing_a_window_replaces_it(deployment, monitoring_redis, settings, versions):
    assert _sample_traffic(settings, deployment, version=2, rows=500) == 10
    now = timezone.now()
    seen = samples_read(deployment=deployment.name, start=now - timedelta(minutes=10), end=now)
    assert len(seen[2].records) == 500
    first = drift_compute_now(deployment=deployment, seconds=600, now=now)
    second = drift_compute_now(deployment=deployment, seconds=600, now=now)
    assert [w.pk for w in first] == [w.pk for w in second]
    assert DriftWindow.objects.count() == 1
    assert DriftFeature.objects.count() == 4


def test_scheduled_windows_are_computed_once_and_thresholds_are_per_deployment(
    deployment, monitoring_redis, settings
):
    MonitoringPolicy.objects.create(
        deployment=deployment,
        drift_window_seconds=60,
        drift_thresholds={"psi_drift": 100, "ks_drift": 2},
    )
    if timezone.now().second > 55:  # keep the samples inside one minute-long window
        time.sleep(61 - timezone.now().second)
    started = timezone.now()
    _sample_traffic(settings, deployment, version=2, rows=1000, shift_age=20.0)
    later = started.replace(second=0, microsecond=0) + timezone.timedelta(seconds=61)
    [window] = drift_windows_due(now=later)
    assert drift_windows_due(now=later) == []
    assert window.kind == DriftWindowKind.SCHEDULED
    assert (window.end - window.start).total_seconds() == 60
    # Thresholds raised for this deployment: the same shift is now only a warning.
    assert window.features.get(feature="age").status == "warn"
    assert window.thresholds["psi_drift"] == 100
