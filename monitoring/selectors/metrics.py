"""Window summaries per version (what the metrics API answers): traffic merged in Python,
cost, drift, guard breaches, alerts, webhooks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import QuerySet

from deployments.models import Deployment
from gateway.metrics import BUCKET_COUNT, percentile_from_histogram
from monitoring.models import (
    Alert,
    DriftFeature,
    DriftWindow,
    GuardBreach,
    MetricRollup,
    MonitoringPolicy,
    SlotResourceSample,
    WebhookDelivery,
    WebhookEndpoint,
)
from monitoring.selectors.windows import window_bounds

# --- latency, throughput, errors -----------------------------------------------------------


@dataclass
class TrafficSummary:
    """Roll-ups of one version over a window, merged."""

    requests: int = 0
    rows: int = 0  # rows predicted, every status
    predictions: int = 0  # rows predicted with a 2xx answer (what cost is divided by)
    errors: int = 0  # 5xx
    client_errors: int = 0  # 4xx
    latency_us_sum: int = 0
    histogram: np.ndarray | None = None
    # requests per roll-up period (start, period seconds): for the busiest-minute rate
    by_period: dict[tuple[datetime, int], int] = field(default_factory=dict)

    def add(
        self,
        *,
        status: int,
        count: int,
        rows: int,
        errors: int,
        lat: int,
        hist: Sequence[int],
        start: datetime | None = None,
        period: int = 60,
    ) -> None:
        if start is not None:
            self.by_period[(start, period)] = self.by_period.get((start, period), 0) + count
        self.requests += count
        self.rows += rows
        if 200 <= status < 300:
            self.predictions += rows
        if 400 <= status < 500:
            self.client_errors += count
        self.errors += errors
        self.latency_us_sum += lat
        array = np.asarray(hist, dtype=np.int64)
        self.histogram = array.copy() if self.histogram is None else self.histogram + array

    def merge(self, other: TrafficSummary) -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.predictions += other.predictions
        self.errors += other.errors
        self.client_errors += other.client_errors
        self.latency_us_sum += other.latency_us_sum
        for period, count in other.by_period.items():
            self.by_period[period] = self.by_period.get(period, 0) + count
        if other.histogram is not None:
            self.histogram = (
                other.histogram.copy()
                if self.histogram is None
                else self.histogram + other.histogram
            )

    def percentile_ms(self, q: float) -> float | None:
        if self.histogram is None:
            return None
        return percentile_from_histogram(self.histogram.tolist(), q)

    def as_dict(self, seconds: float) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "requests": self.requests,
            "rows": self.rows,
            "predictions": self.predictions,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "error_rate": (self.errors / self.requests) if self.requests else None,
            "throughput_rps": self.requests / seconds if seconds > 0 else None,
            "rows_per_second": self.rows / seconds if seconds > 0 else None,
            # The window average hides a version that served only part of it.
            "peak_rps": max((n / p for (_, p), n in self.by_period.items()), default=None),
            "active_seconds": sum(p for _, p in self.by_period),
            "latency_ms": {
                "p50": ms(self.percentile_ms(0.50)),
                "p95": ms(self.percentile_ms(0.95)),
                "p99": ms(self.percentile_ms(0.99)),
                "mean": ms(self.latency_us_sum / self.requests / 1e3) if self.requests else None,
            },
        }


def rollup_rows(
    *, deployment: Deployment, start: datetime, end: datetime, version: int | None = None
) -> QuerySet[MetricRollup]:
    """Minute and hour rows that start within ``[start, end)`` (windows align to rows)."""
    rows = MetricRollup.objects.filter(deployment=deployment, start__gte=start, start__lt=end)
    if version is not None:
        rows = rows.filter(version=version)
    return rows


def traffic_by_version(
    *, deployment: Deployment, start: datetime, end: datetime, version: int | None = None
) -> dict[int, TrafficSummary]:
    """Merge roll-ups per version (histograms bucket by bucket, counts summed)."""
    return _merged(_rollup_values(deployment, start, end, version))


def traffic_aligned(
    *, deployment: Deployment, start: datetime, end: datetime, to_version: int
) -> tuple[dict[int, TrafficSummary], dict[int, TrafficSummary]]:
    """:func:`traffic_by_version` over the window, and the same counting, for every version,
    only the roll-up periods in which ``to_version`` answered too -- from one read.

    The second is what a canary is compared on: its baseline over the same minutes, not the
    baseline's minutes before the canary took traffic (another load, another regime -- a
    shadow's mirroring, say)."""
    found = _rollup_values(deployment, start, end, None)
    periods = {(row[7], row[8]) for row in found if row[0] == to_version}
    return _merged(found), _merged(row for row in found if (row[7], row[8]) in periods)


def _rollup_values(
    deployment: Deployment, start: datetime, end: datetime, version: int | None
) -> list[tuple[Any, ...]]:
    rows_qs = rollup_rows(deployment=deployment, start=start, end=end, version=version)
    return list(
        rows_qs.values_list(
            "version",
            "status",
            "count",
            "rows",
            "errors",
            "latency_us_sum",
            "histogram",
            "start",
            "period_seconds",
        )
    )


def _merged(found: Iterable[tuple[Any, ...]]) -> dict[int, TrafficSummary]:
    summaries: dict[int, TrafficSummary] = {}
    for v, status, count, rows, errors, lat, hist, row_start, period in found:
        if len(hist) != BUCKET_COUNT:  # written by another bucket layout: unusable, skip
            continue
        summaries.setdefault(v, TrafficSummary()).add(
            status=status,
            count=count,
            rows=rows,
            errors=errors,
            lat=lat,
            hist=hist,
            start=row_start,
            period=period,
        )
    return summaries


# --- cost -----------------------------------------------------------------------------------


def prices_for(deployment: Deployment) -> dict[str, float]:
    """Price per CPU-hour and per GB-hour: the deployment's override, else the settings."""
    policy = MonitoringPolicy.objects.filter(deployment=deployment).first()
    cpu = policy.price_cpu_hour if policy and policy.price_cpu_hour is not None else None
    gb = policy.price_gb_hour if policy and policy.price_gb_hour is not None else None
    return {
        "cpu_hour": float(
            cpu if cpu is not None else Decimal(str(settings.MODELYARD_PRICE_CPU_HOUR))
        ),
        "gb_hour": float(gb if gb is not None else Decimal(str(settings.MODELYARD_PRICE_GB_HOUR))),
    }


@dataclass
class ResourceUse:
    cpu_seconds: float = 0.0
    gb_seconds: float = 0.0  # memory integrated over time (GB x s)
    samples: int = 0

    def cost(self, prices: dict[str, float]) -> float:
        return (
            self.cpu_seconds / 3600 * prices["cpu_hour"]
            + self.gb_seconds / 3600 * prices["gb_hour"]
        )


def resources_by_version(
    *, deployment: Deployment, start: datetime, end: datetime
) -> dict[int, ResourceUse]:
    """CPU-seconds and GB-seconds of each version's slots within ``[start, end)``.

    Consecutive samples of one slot give a CPU delta (a drop means the server restarted: the
    new total is all new) and a memory area (RSS at the earlier sample x the gap). An interval
    in which the slot changed version is given to the new version for CPU and skipped for
    memory, since the old server's RSS says nothing about the new one.
    """
    use: dict[int, ResourceUse] = {}
    samples = SlotResourceSample.objects.filter(
        deployment=deployment, taken_at__gte=start, taken_at__lt=end
    ).order_by("slot", "taken_at")
    previous: SlotResourceSample | None = None
    for sample in samples.only("slot", "version", "cpu_seconds", "rss_bytes", "taken_at"):
        entry = use.setdefault(sample.version, ResourceUse())
        entry.samples += 1
        if previous is not None and previous.slot == sample.slot:
            if sample.version != previous.version or sample.cpu_seconds < previous.cpu_seconds:
                entry.cpu_seconds += sample.cpu_seconds
            else:
                entry.cpu_seconds += sample.cpu_seconds - previous.cpu_seconds
            if sample.version == previous.version:
                gap = (sample.taken_at - previous.taken_at).total_seconds()
                entry.gb_seconds += previous.rss_bytes / 1e9 * gap
        previous = sample
    return use


def cost_summary(
    use: ResourceUse | None, predictions: int, prices: dict[str, float]
) -> dict[str, Any]:
    """Cost figures with their inputs, so a reader can redo the arithmetic."""
    use = use or ResourceUse()
    cost = use.cost(prices)
    return {
        "cpu_seconds": use.cpu_seconds,
        "memory_gb_hours": use.gb_seconds / 3600,
        "resource_samples": use.samples,
        "price_cpu_hour": prices["cpu_hour"],
        "price_gb_hour": prices["gb_hour"],
        "cost": cost,
        "predictions": predictions,
        "cost_per_prediction": (cost / predictions) if predictions and use.samples > 1 else None,
        "formula": "(cpu_seconds/3600*price_cpu_hour + memory_gb_hours*price_gb_hour) "
        "/ predictions",
    }


# --- drift ----------------------------------------------------------------------------------


def drift_latest_window(
    *, deployment: Deployment, version: int, since: datetime | None = None
) -> DriftWindow | None:
    windows = DriftWindow.objects.filter(deployment=deployment, version=version)
    if since is not None:
        windows = windows.filter(end__gt=since)
    return windows.prefetch_related("features").order_by("-end", "-id").first()


def drift_feature_figures(feature: DriftFeature) -> dict[str, Any]:
    """One feature's drift statistics as the API, the guards' evidence and the retrain
    request show them."""
    return {
        "kind": feature.kind,
        "status": feature.status,
        "live_rows": feature.live_rows,
        "psi": feature.psi,
        "ks": feature.ks,
        "ks_pvalue": feature.ks_pvalue,
        "chi2": feature.chi2,
        "chi2_pvalue": feature.chi2_pvalue,
        "js": feature.js,
        "missing_rate": feature.missing_rate,
    }


def drift_window_dict(window: DriftWindow | None) -> dict[str, Any] | None:
    if window is None:
        return None
    return {
        "id": window.pk,
        "kind": window.kind,
        "start": window.start,
        "end": window.end,
        "status": window.status,
        "live_rows": window.live_rows,
        "features": {f.feature: drift_feature_figures(f) for f in window.features.all()},
        "prediction": window.prediction,
        "thresholds": window.thresholds,
    }


def drift_feature_series(
    *, deployment: Deployment, start: datetime, end: datetime, feature: str | None = None
) -> QuerySet[DriftFeature]:
    rows = DriftFeature.objects.select_related("window").filter(
        window__deployment=deployment, window__end__gt=start, window__end__lte=end
    )
    if feature:
        rows = rows.filter(feature=feature)
    return rows.order_by("feature", "window__end")


# --- the metrics page / API -----------------------------------------------------------------


def deployment_metrics(
    *, deployment: Deployment, window: str, now: datetime | None = None
) -> dict[str, Any]:
    """Everything ``GET /deployments/{name}/metrics/`` shows, per version and in total."""
    start, end = window_bounds(window, now=now)
    seconds = (end - start).total_seconds()
    traffic = traffic_by_version(deployment=deployment, start=start, end=end)
    resources = resources_by_version(deployment=deployment, start=start, end=end)
    prices = prices_for(deployment)
    live_version = next(
        (
            s.version.number
            for s in deployment.slots.all()
            if s.color == deployment.live_slot and s.version
        ),
        None,
    )
    versions = sorted(set(traffic) | set(resources) | ({live_version} if live_version else set()))
    total = TrafficSummary()
    per_version = []
    for number in versions:
        summary = traffic.get(number, TrafficSummary())
        total.merge(summary)
        per_version.append(
            {
                "version": number,
                "live": number == live_version,
                **summary.as_dict(seconds),
                "cost": cost_summary(resources.get(number), summary.predictions, prices),
                "drift": drift_window_dict(
                    drift_latest_window(deployment=deployment, version=number, since=start)
                ),
            }
        )
    return {
        "deployment": deployment.name,
        "window": window,
        "start": start,
        "end": end,
        "live_version": live_version,
        "versions": per_version,
        "total": total.as_dict(seconds),
    }


def guard_breach_list(*, deployment: Deployment) -> QuerySet[GuardBreach]:
    return GuardBreach.objects.filter(deployment=deployment).select_related("rollback")


def alert_list(*, deployment: Deployment | None = None) -> QuerySet[Alert]:
    alerts = Alert.objects.select_related("deployment")
    return alerts.filter(deployment=deployment) if deployment is not None else alerts


def webhook_endpoint_list() -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.select_related("deployment", "created_by")


def webhook_delivery_list(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.select_related("alert").filter(endpoint=endpoint)
