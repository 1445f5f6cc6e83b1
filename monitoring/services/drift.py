"""Drift: compare each live window of a version with its reference profile
(monitoring/services/drift_profiles.py). Windows are keyed by (deployment, version, kind,
start, end), so computing one again replaces it instead of adding a second.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments.models import Deployment
from monitoring import data_quality as dq
from monitoring import drift_stats as ds
from monitoring.choices import DriftStatus, DriftWindowKind, FeatureKind
from monitoring.models import DriftFeature, DriftWindow, MonitoringPolicy
from monitoring.services.drift_profiles import (
    PREDICTION,
    LiveSamples,
    drift_prediction_profile_ensure,
    drift_profile_ensure,
    profiles_of,
    profiling_contract,
    samples_read,
    typed_live,
)
from registry.modelkit import contract as model_contract
from registry.models import ModelVersion

logger = logging.getLogger(__name__)


# --- windows --------------------------------------------------------------------------------


def drift_thresholds(deployment: Deployment) -> dict[str, float]:
    policy = MonitoringPolicy.objects.filter(deployment=deployment).first()
    overrides = (policy.drift_thresholds if policy else None) or {}
    return {**ds.DEFAULT_THRESHOLDS, **{k: float(v) for k, v in overrides.items()}}


# A profiled feature: its name, its reference profile and its live column.
_FeatureJob = tuple[str, ds.NumericProfile | ds.CategoricalProfile, Any]


def _compare_one(
    job: _FeatureJob, thresholds: dict[str, float]
) -> tuple[str, FeatureKind, ds.FeatureResult]:
    name, profile, column = job
    min_rows = settings.MODELYARD_DRIFT_MIN_ROWS
    if isinstance(profile, ds.NumericProfile):
        values = pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype=np.float64)
        result = ds.numeric_drift(profile, values, thresholds=thresholds, min_rows=min_rows)
        return name, FeatureKind.NUMERIC, result
    result = ds.categorical_drift(profile, column, thresholds=thresholds, min_rows=min_rows)
    return name, FeatureKind.CATEGORICAL, result


def drift_compare(
    profiles: dict[str, ds.NumericProfile | ds.CategoricalProfile],
    columns: dict[str, Any],
    *,
    thresholds: dict[str, float] | None = None,
    workers: int | None = None,
) -> dict[str, tuple[str, ds.FeatureResult]]:
    """Compare every profiled feature with its live column; missing columns are no_data.

    Features run on a small thread pool: numpy's sort and searchsorted release the GIL.
    """
    thresholds = {**ds.DEFAULT_THRESHOLDS, **(thresholds or {})}
    results: dict[str, tuple[str, ds.FeatureResult]] = {}
    present: list[_FeatureJob] = []
    for name, profile in profiles.items():
        column = columns.get(name)
        if column is None or len(column) == 0:
            kind = (
                FeatureKind.NUMERIC
                if isinstance(profile, ds.NumericProfile)
                else FeatureKind.CATEGORICAL
            )
            results[name] = (kind, ds.FeatureResult(status=DriftStatus.NO_DATA, live_rows=0))
        else:
            present.append((name, profile, column))
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(present) > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda job: _compare_one(job, thresholds), present))
    else:
        done = [_compare_one(job, thresholds) for job in present]
    for name, kind, result in done:
        results[name] = (kind, result)
    return results


def drift_compute_window(
    *,
    deployment: Deployment,
    version: ModelVersion,
    start: datetime,
    end: datetime,
    kind: str,
    samples: LiveSamples | None = None,
) -> DriftWindow | None:
    """Compare the version's sampled traffic in ``[start, end)`` with its reference profile.

    Returns None when the version has no reference sample. Idempotent: the window row for
    (deployment, version, kind, start, end) is replaced, never duplicated.
    """
    began = time.perf_counter()
    profile = drift_profile_ensure(version=version)
    if profile is None:
        return None
    if samples is None:
        samples = samples_read(deployment=deployment.name, start=start, end=end).get(
            version.number, LiveSamples()
        )
    contract = profiling_contract(version)
    quality: dict[str, Any] | None = None
    feature_quality: dict[str, dq.FeatureQuality] = {}
    if contract:  # positional rows are in the contract's order; values typed by it
        raw = samples.frame(model_contract.feature_names(contract))
        checked = dq.window_quality(
            contract["features"],
            profiles_of(profile),
            raw,
            samples.sent_fields(model_contract.feature_names(contract)),
            drift_thresholds(deployment),
        )
        quality, feature_quality = checked.as_dict(), checked.features
        frame = typed_live(contract, raw)
    else:
        feature_names = [f["name"] for f in profile.features]
        frame = samples.frame(list(version.signature.get("feature_names") or feature_names))
    thresholds = drift_thresholds(deployment)
    profiles = profiles_of(profile)
    columns = {name: frame[name].to_numpy() for name in profiles if name in frame.columns}
    results = drift_compare(profiles, columns, thresholds=thresholds)
    prediction: dict[str, Any] | None = None
    # True once the baseline is stored, so profile.prediction is set then.
    if (
        drift_prediction_profile_ensure(profile=profile, version=version)
        and profile.prediction is not None
    ):
        predicted = ds.profiles_from_storage(profile.prediction, profile.prediction_arrays or b"")
        outcome = drift_compare(
            predicted,
            {PREDICTION: np.asarray(samples.predictions, dtype=object)},
            thresholds=thresholds,
        )
        pred_kind, pred_result = outcome[PREDICTION]
        prediction = {"kind": pred_kind, **pred_result.as_dict()}
    statuses = [result.status for _, result in results.values()]
    status = ds.worst_status(statuses)
    # Scheduled and on-demand windows are keyed by their span. A guard re-checks a growing
    # span every few seconds: it keeps ONE window per version, updated in place, so neither
    # the time series nor the drift alerts fill up with near-copies.
    key: dict[str, Any] = {"deployment": deployment, "version": version.number, "kind": kind}
    span = {"start": start, "end": end}
    if kind != DriftWindowKind.GUARD:
        key, span = {**key, **span}, {}
    with transaction.atomic():
        window, _ = DriftWindow.objects.update_or_create(
            **key,
            defaults={
                **span,
                "live_rows": len(frame),
                "status": status,
                "prediction": prediction,
                "data_quality": quality,
                "thresholds": thresholds,
                "seconds": time.perf_counter() - began,
            },
        )
        window.features.all().delete()
        DriftFeature.objects.bulk_create(
            DriftFeature(
                window=window,
                feature=name,
                kind=feature_kind,
                status=result.status,
                live_rows=result.live_rows,
                missing_rate=result.missing_rate,
                psi=result.psi,
                ks=result.ks,
                ks_pvalue=result.ks_pvalue,
                chi2=result.chi2,
                chi2_pvalue=result.chi2_pvalue,
                js=result.js,
                **_quality_fields(feature_quality.get(name)),
            )
            for name, (feature_kind, result) in results.items()
        )
    return window


def _quality_fields(quality: dq.FeatureQuality | None) -> dict[str, Any]:
    if quality is None:
        return {}
    return {
        "type_mismatch_rate": quality.type_mismatch_rate,
        "out_of_range_rate": quality.out_of_range_rate,
        "new_category_rate": quality.new_category_rate,
        "quality_issues": quality.issues,
    }


def _window_seconds(deployment: Deployment) -> int:
    policy = MonitoringPolicy.objects.filter(deployment=deployment).first()
    return (
        policy.drift_window_seconds if policy else None
    ) or settings.MODELYARD_DRIFT_WINDOW_SECONDS


def _versions_by_number(deployment: Deployment, numbers: Iterable[int]) -> dict[int, ModelVersion]:
    return {
        v.number: v
        for v in ModelVersion.objects.filter(model_id=deployment.model_id, number__in=list(numbers))
    }


def drift_windows_due(*, now: datetime | None = None) -> list[DriftWindow]:
    """Compute the last closed scheduled window of every deployment, if not done yet."""
    now = now or timezone.now()
    computed = []
    for deployment in Deployment.objects.exclude(live_slot=""):
        seconds = _window_seconds(deployment)
        end_ts = int(now.timestamp()) // seconds * seconds
        start = datetime.fromtimestamp(end_ts - seconds, tz=UTC)
        end = datetime.fromtimestamp(end_ts, tz=UTC)
        # One run computes every version seen in the window, so any row means it is done
        # (and the stream, up to a million rows, need not be read again every minute).
        if DriftWindow.objects.filter(
            deployment=deployment, kind=DriftWindowKind.SCHEDULED, start=start, end=end
        ).exists():
            continue
        samples = samples_read(deployment=deployment.name, start=start, end=end)
        versions = _versions_by_number(deployment, samples)
        for number, version in versions.items():
            window = drift_compute_window(
                deployment=deployment,
                version=version,
                start=start,
                end=end,
                kind=DriftWindowKind.SCHEDULED,
                samples=samples[number],
            )
            if window is not None:
                computed.append(window)
    return computed


def drift_compute_now(
    *, deployment: Deployment, seconds: int | None = None, now: datetime | None = None
) -> list[DriftWindow]:
    """On demand: every version seen in the last ``seconds`` (default: the window length)."""
    end = now or timezone.now()
    start = end - timedelta(seconds=seconds or _window_seconds(deployment))
    samples = samples_read(deployment=deployment.name, start=start, end=end)
    windows = []
    for number, version in _versions_by_number(deployment, samples).items():
        window = drift_compute_window(
            deployment=deployment,
            version=version,
            start=start,
            end=end,
            kind=DriftWindowKind.ON_DEMAND,
            samples=samples[number],
        )
        if window is not None:
            windows.append(window)
    return windows


def drift_retention(*, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.MODELYARD_DRIFT_RETENTION_DAYS)
    deleted, _ = DriftWindow.objects.filter(end__lt=cutoff).delete()
    return deleted
