"""Monitoring writes, one module per concern; import from here."""

from __future__ import annotations

from monitoring.services.alerts import alerts_detect, alerts_email
from monitoring.services.baselines import prediction_baselines_ensure
from monitoring.services.drift import (
    drift_compute_now,
    drift_compute_window,
    drift_retention,
    drift_windows_due,
)
from monitoring.services.drift_profiles import drift_profile_ensure
from monitoring.services.guards import guards_check, guards_check_deployment
from monitoring.services.policy import (
    monitoring_policy_document,
    monitoring_policy_effective,
    monitoring_policy_update,
)
from monitoring.services.prediction_log import partitions_drop, predictions_ingest
from monitoring.services.quality import labels_ingest, labels_parse_csv
from monitoring.services.resources import resources_retention, resources_sample
from monitoring.services.rollups import metrics_downsample, metrics_retention, metrics_rollup
from monitoring.services.webhooks import (
    webhook_deliver,
    webhook_deliveries_due,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_update,
    webhook_sign,
    webhook_url_check,
)

__all__ = [
    "alerts_detect",
    "alerts_email",
    "drift_compute_now",
    "drift_compute_window",
    "drift_profile_ensure",
    "drift_retention",
    "drift_windows_due",
    "guards_check",
    "guards_check_deployment",
    "labels_ingest",
    "labels_parse_csv",
    "metrics_downsample",
    "metrics_retention",
    "metrics_rollup",
    "monitoring_policy_document",
    "monitoring_policy_effective",
    "monitoring_policy_update",
    "partitions_drop",
    "prediction_baselines_ensure",
    "predictions_ingest",
    "resources_retention",
    "resources_sample",
    "webhook_deliver",
    "webhook_deliveries_due",
    "webhook_endpoint_create",
    "webhook_endpoint_delete",
    "webhook_endpoint_update",
    "webhook_sign",
    "webhook_url_check",
]
