"""Monitoring tasks: thin, periodic, idempotent. Each states its policy beside it."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deployments.models import Deployment
from monitoring import services

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
    }
