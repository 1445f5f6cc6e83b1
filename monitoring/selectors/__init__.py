"""Monitoring reads, one module per concern; import from here.

``windows``: the one list of time windows (API and dashboard). ``metrics``: window summaries
per version merged in Python (the metrics API, guards). ``buckets``: the dashboard's chart
buckets merged in SQL and cached. ``dashboard``: its other panels (cost, drift, predictions).
``quality``: live quality from the prediction log and its labels.
"""

from __future__ import annotations

from monitoring.selectors.buckets import (
    WARM_WINDOWS,
    Buckets,
    Cell,
    WarmResult,
    dashboard_cache_warm,
    deployments_with_traffic,
    error_rate_last_hour,
    rollup_buckets,
    series,
)
from monitoring.selectors.dashboard import (
    DASHBOARD_DEFAULT_WINDOW,
    cost_by_version,
    drift_heatmap,
    prediction_distribution,
    shares,
)
from monitoring.selectors.metrics import (
    ResourceUse,
    TrafficSummary,
    alert_list,
    cost_summary,
    deployment_metrics,
    drift_feature_series,
    drift_latest_window,
    drift_window_dict,
    guard_breach_list,
    prices_for,
    resources_by_version,
    rollup_rows,
    traffic_by_version,
    webhook_delivery_list,
    webhook_endpoint_list,
)
from monitoring.selectors.quality import prediction_log_versions, quality_compute, quality_series
from monitoring.selectors.windows import (
    WINDOWS,
    Window,
    window_bounds,
    window_check,
    window_range,
)

__all__ = [
    "DASHBOARD_DEFAULT_WINDOW",
    "WARM_WINDOWS",
    "WINDOWS",
    "Buckets",
    "Cell",
    "ResourceUse",
    "TrafficSummary",
    "WarmResult",
    "Window",
    "alert_list",
    "cost_by_version",
    "cost_summary",
    "dashboard_cache_warm",
    "deployment_metrics",
    "deployments_with_traffic",
    "drift_feature_series",
    "drift_heatmap",
    "drift_latest_window",
    "drift_window_dict",
    "error_rate_last_hour",
    "guard_breach_list",
    "prediction_distribution",
    "prediction_log_versions",
    "prices_for",
    "quality_compute",
    "quality_series",
    "resources_by_version",
    "rollup_buckets",
    "rollup_rows",
    "series",
    "shares",
    "traffic_by_version",
    "webhook_delivery_list",
    "webhook_endpoint_list",
    "window_bounds",
    "window_check",
    "window_range",
]
