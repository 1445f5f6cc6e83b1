"""Frontend tasks: keep the dashboard's closed-bucket cache warm so no request merges cold."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frontend import dashboard_data

logger = logging.getLogger(__name__)

# A database or Redis blip is worth a quick retry; anything else is a bug to see in the log.
TRANSIENT = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


@shared_task(
    name="frontend.dashboard_cache_warm",
    # Writes the very cache entries a dashboard request would: a redelivery or an overlapping
    # run merges the same rows and writes the same values again.
    acks_late=True,
    # A cold 30d merge of one busy deployment takes a few seconds; many deployments, longer.
    soft_time_limit=240,
    time_limit=300,
    # Periodic every minute: a stale message is the next run's work, never let them pile up.
    expires=50,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def dashboard_cache_warm_task() -> dict[str, Any]:
    """Merge and cache the closed chart buckets of every deployment with traffic."""
    result = dashboard_data.dashboard_cache_warm()
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


@shared_task(
    name="frontend.prediction_baselines_ensure",
    # Builds each baseline once (a version with one is skipped): a redelivery or an
    # overlapping run asks the slot again at worst and writes the same profile.
    acks_late=True,
    # One reference sample (at most MODELYARD_MAX_REFERENCE_ROWS rows) per new version,
    # sent in chunks to its slot with a 30 s timeout each.
    soft_time_limit=240,
    time_limit=300,
    # Every minute: a stale message is the next run's work.
    expires=50,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=2,
)
def prediction_baselines_ensure_task() -> dict[str, Any]:
    """Give every newly served version its reference prediction distribution."""
    built = dashboard_data.prediction_baselines_ensure()
    if built:
        logger.info("prediction baselines built for versions %s", built)
    return {"built": built}
