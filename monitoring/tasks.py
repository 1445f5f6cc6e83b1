"""Monitoring tasks: thin, periodic, idempotent. Each states its policy beside it."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deployments.backends import route_store
from deployments.models import Deployment
from monitoring import selectors, services

logger = logging.getLogger(__name__)

# A database or Redis blip is worth a quick retry; anything else is a bug to see in the log.
TRANSIENT = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


@shared_task(
    name="monitoring.metrics_rollup",
    # Upserts absolute totals and marks buffers clean only if unchanged: a redelivery or an
    # overlapping run (which the advisory lock turns away) writes the same rows again.
    acks_late=True,
    soft_time_limit=50,
    time_limit=60,
    # Periodic every 10 s: a stale message is the next run's work, never let them pile up.
    expires=30,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def metrics_rollup_task() -> dict[str, Any]:
    """Move the gateway's per-minute buffers from Redis into roll-up rows."""
    result = services.metrics_rollup()
    if result.buffers:
        logger.info(
            "metrics roll-up: %d buffers, %d rows, %d skipped, %.3fs%s",
            result.buffers,
            result.rows_written,
            result.skipped,
            result.seconds,
            " (another roll-up held the lock)" if result.locked else "",
        )
    return {"buffers": result.buffers, "rows": result.rows_written, "locked": result.locked}


@shared_task(
    name="monitoring.resources_sample",
    # A sample is a point in time: a late or repeated one only adds a harmless extra point.
    acks_late=True,
    soft_time_limit=30,
    time_limit=40,
    expires=15,
)
def resources_sample_task() -> int:
    """Sample CPU-seconds and RSS of every ready slot (for cost per prediction)."""
    return len(services.resources_sample())


@shared_task(
    name="monitoring.guards_check",
    # Rollback is a state-guarded service: a second run finds the version already rolled
    # back (no baking rollout left) and does nothing.
    acks_late=True,
    soft_time_limit=120,
    time_limit=150,
    expires=15,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def guards_check_task() -> list[int]:
    """Evaluate every guarded deployment; roll back on a breach."""
    breaches = services.guards_check()
    for breach in breaches:
        logger.warning("guard breach %s: %s", breach.pk, breach.message)
    return [b.pk for b in breaches]


@shared_task(
    name="monitoring.drift_windows",
    # Windows are keyed (deployment, version, kind, start, end): recomputing replaces.
    acks_late=True,
    soft_time_limit=540,
    time_limit=600,
    expires=60,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def drift_windows_task() -> list[int]:
    """Compute each deployment's last closed drift window, once."""
    return [w.pk for w in services.drift_windows_due()]


@shared_task(
    name="monitoring.drift_compute",
    acks_late=True,  # same keyed upsert as above
    soft_time_limit=540,
    time_limit=600,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def drift_compute_task(deployment_id: int, seconds: int | None = None) -> list[int]:
    """On demand: drift of every version seen in the deployment's last ``seconds``."""
    deployment = Deployment.objects.get(pk=deployment_id)
    return [w.pk for w in services.drift_compute_now(deployment=deployment, seconds=seconds)]


@shared_task(
    name="monitoring.alerts_detect",
    # Alerts have unique keys: detecting again creates nothing.
    acks_late=True,
    soft_time_limit=60,
    time_limit=75,
    expires=15,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def alerts_detect_task() -> int:
    """Turn recent rollouts, rollbacks, drift and guard breaches into alerts."""
    return len(services.alerts_detect())


@shared_task(
    name="monitoring.webhooks_deliver",
    # Each delivery is claimed with a lease (conditional UPDATE) before it is sent; failures
    # are retried by the delivery's own backoff, not by Celery.
    acks_late=True,
    soft_time_limit=120,
    time_limit=150,
    expires=10,
)
def webhooks_deliver_task() -> int:
    """Attempt every webhook delivery that is due."""
    delivered = 0
    for delivery_id in services.webhook_deliveries_due():
        delivered += services.webhook_deliver(delivery_id=delivery_id).state == "succeeded"
    return delivered


@shared_task(
    name="monitoring.retention",
    # Folding deletes the minute rows it adds to their hour in one statement: a rerun finds
    # nothing left to fold.
    acks_late=True,
    soft_time_limit=600,
    time_limit=660,
    expires=1800,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def retention_task() -> dict[str, int]:
    """Downsample old minute roll-ups to hours; delete data past its retention."""
    folded, deleted = services.metrics_retention()
    return {
        "minutes_folded": folded,
        "hours_deleted": deleted,
        "resource_samples_deleted": services.resources_retention(),
        "drift_windows_deleted": services.drift_retention(),
        "prediction_log_days_dropped": len(
            services.partitions_drop(
                older_than=timezone.now()
                - timedelta(days=settings.MODELYARD_PREDICTION_LOG_RETENTION_DAYS)
            )
        ),
    }


# Every 2 s; a run moves at most 20,000 answers. acks_late is harmless: the ingest acknowledges
# stream entries only after their rows committed, and inserting them again keeps the first.
@shared_task(
    name="monitoring.predictions_ingest",
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
    expires=10,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def predictions_ingest_task() -> dict[str, Any]:
    consumer = f"{socket.gethostname()}:{os.getpid()}"
    totals: dict[str, Any] = {"entries": 0, "rows": 0, "duplicates": 0, "invalid": 0}
    for _ in range(4):
        result = services.predictions_ingest(route_store(), consumer=consumer, count=5000)
        for name in totals:
            totals[name] += getattr(result, name)
        if result.unknown_deployments:
            logger.warning(
                "prediction log: entries of unknown deployments %s dropped",
                sorted(result.unknown_deployments),
            )
        if result.entries < 5000:
            break
    return totals


# --- the dashboard's helpers ------------------------------------------------------------------
# Both run every minute and have the same policy: a stale message is the next run's work
# (expires, so they never pile up); a cold 30d merge of a busy deployment, or one reference
# sample sent to a slot in chunks with a 30 s timeout each, takes seconds, many deployments
# or new versions longer (time limits); acks_late because each run writes what a redelivery
# or an overlapping run would write again (reasons beside each task).
_EVERY_MINUTE: dict[str, Any] = {
    "acks_late": True,
    "soft_time_limit": 240,
    "time_limit": 300,
    "expires": 50,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "max_retries": 2,
}


# Writes the very cache entries a dashboard request would: a rerun merges the same rows and
# writes the same values again.
@shared_task(name="monitoring.dashboard_cache_warm", **_EVERY_MINUTE)
def dashboard_cache_warm_task() -> dict[str, Any]:
    """Merge and cache the closed chart buckets of every deployment with traffic."""
    result = selectors.dashboard_cache_warm()
    if result.seconds > 5:
        logger.info(
            "dashboard cache warm: %d deployments, %d windows, %.3fs",
            result.deployments,
            result.windows,
            result.seconds,
        )
    return {
        "deployments": result.deployments,
        "windows": result.windows,
        "seconds": round(result.seconds, 3),
    }


# Builds each baseline once (a version with one is skipped): a rerun asks the slot again at
# worst and writes the same profile.
@shared_task(name="monitoring.prediction_baselines_ensure", **_EVERY_MINUTE)
def prediction_baselines_ensure_task() -> dict[str, Any]:
    """Give every newly served version its reference prediction distribution."""
    built = services.prediction_baselines_ensure()
    if built:
        logger.info("prediction baselines built for versions %s", built)
    return {"built": built}


# The names these two had in the frontend app, still registered so that a message an older
# beat queued just before an upgrade is received as a known task (and dropped as expired)
# rather than failed as NotRegistered: Celery looks the name up before it checks the expiry.
# Messages expire after 50 s, so these can go one release after the move (issue 17).
@shared_task(name="frontend.dashboard_cache_warm", **_EVERY_MINUTE)
def dashboard_cache_warm_legacy_task() -> dict[str, Any]:
    """The former name of monitoring.dashboard_cache_warm (see above)."""
    return dashboard_cache_warm_task()


@shared_task(name="frontend.prediction_baselines_ensure", **_EVERY_MINUTE)
def prediction_baselines_ensure_legacy_task() -> dict[str, Any]:
    """The former name of monitoring.prediction_baselines_ensure (see above)."""
    return prediction_baselines_ensure_task()
