"""The dashboard's panels besides the bucket charts: cost per version, the drift heatmap and
predictions against the reference, each as plain data for a chart function."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import redis

from deployments.models import Deployment
from monitoring import drift_stats as ds
from monitoring.models import DriftProfile
from monitoring.selectors.buckets import Cell
from monitoring.selectors.metrics import (
    cost_summary,
    drift_feature_series,
    prices_for,
    resources_by_version,
)

# What the dashboard shows when no window is asked for (the API's default is its serializer's).
DASHBOARD_DEFAULT_WINDOW = "24h"


def shares(counts: Sequence[float]) -> list[float]:
    """Counts as fractions of their sum (all zeros when there are none)."""
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def cost_by_version(
    *, deployment: Deployment, start: datetime, end: datetime, totals: dict[int, Cell]
) -> list[dict[str, Any]]:
    """Cost per prediction per version with its raw inputs (monitoring's own arithmetic)."""
    resources = resources_by_version(deployment=deployment, start=start, end=end)
    prices = prices_for(deployment)
    out: list[dict[str, Any]] = []
    for version in sorted(set(resources) | set(totals)):
        predictions = totals[version].predictions if version in totals else 0
        out.append(
            {"version": version, **cost_summary(resources.get(version), predictions, prices)}
        )
    return out


def drift_heatmap(
    *, deployment: Deployment, start: datetime, end: datetime, version: int | None
) -> dict[str, Any]:
    """Features x window ends of one version: status and score (PSI, else JS) per cell."""
    empty: dict[str, Any] = {
        "features": [],
        "times": [],
        "statuses": [],
        "scores": [],
        "version": version,
    }
    if version is None:
        return empty
    rows = (
        drift_feature_series(deployment=deployment, start=start, end=end)
        .filter(window__version=version)
        .values_list("feature", "window__end", "status", "psi", "js")
    )
    cells: dict[tuple[str, datetime], tuple[str, float | None]] = {}
    features: set[str] = set()
    times: set[datetime] = set()
    for feature, at, status, psi, js in rows:
        features.add(feature)
        times.add(at)
        cells[(feature, at)] = (status, psi if psi is not None else js)
    ordered_features, ordered_times = sorted(features), sorted(times)
    return {
        "features": ordered_features,
        "times": ordered_times,
        "statuses": [
            [cells.get((f, t), (None, None))[0] for t in ordered_times] for f in ordered_features
        ],
        "scores": [
            [cells.get((f, t), (None, None))[1] for t in ordered_times] for f in ordered_features
        ],
        "version": version,
    }


def prediction_distribution(
    *, deployment: Deployment, version: int | None, end: datetime, sample_seconds: int = 3600
) -> dict[str, Any]:
    """Reference prediction shares of ``version`` against its sampled live predictions of the
    last ``sample_seconds`` (the gateway's sample stream), binned the same way."""
    # The stream reader lives with the drift service that consumes it; imported here, not at
    # the top, because the services package imports the selectors.
    from monitoring.services.drift_profiles import samples_read

    empty: dict[str, Any] = {
        "labels": [],
        "reference": [],
        "live": None,
        "live_rows": 0,
        "version": version,
    }
    if version is None:
        return empty
    profile = (
        DriftProfile.objects.filter(version__model=deployment.model_id, version__number=version)
        .only("prediction", "prediction_arrays")
        .first()
    )
    if profile is None or not profile.prediction:
        return empty
    predicted = next(
        iter(
            ds.profiles_from_storage(profile.prediction, profile.prediction_arrays or b"").values()
        )
    )
    try:
        live_values = samples_read(
            deployment=deployment.name, start=end - timedelta(seconds=sample_seconds), end=end
        ).get(version)
    except redis.RedisError:  # show the reference alone, not a 500
        live_values = None
    values = live_values.predictions if live_values else []
    if isinstance(predicted, ds.NumericProfile):
        edges = [float(e) for e in predicted.edges]
        bounds = ["-inf", *[f"{e:.3g}" for e in edges], "inf"]
        labels = [f"({bounds[i]}, {bounds[i + 1]}]" for i in range(len(bounds) - 1)]
        reference = predicted.ref_bin_counts.tolist()
        live = None
        if values:
            array = np.asarray([v for v in values if isinstance(v, (int, float))], dtype=float)
            finite = np.sort(array[np.isfinite(array)])
            live = ds.live_bin_counts(predicted, finite).tolist() if finite.size else None
    else:
        labels = [*predicted.categories, "other"]
        reference = predicted.ref_counts.tolist()
        live = ds.categorical_counts(predicted, values)[0].tolist() if values else None
    return {
        "labels": labels,
        "reference": shares(reference),
        "live": shares(live) if live else None,
        "live_rows": int(sum(live)) if live else 0,
        "version": version,
    }
