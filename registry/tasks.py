from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from registry.selectors import versions_needing_validation
from registry.services import version_validate

logger = logging.getLogger(__name__)


@shared_task(
    name="registry.version_validate",
    # Redelivered if the worker dies mid-validation; the claim makes a second run harmless.
    acks_late=True,
    # The sandbox enforces its own limit; these only catch a stuck worker.
    soft_time_limit=900,
    time_limit=960,
    # Only a lost database connection is worth retrying; model problems end as `invalid`.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
)
def version_validate_task(version_id: int) -> str | None:
    """Validate one uploaded version (claim → scan → sandbox load → validated|invalid)."""
    version = version_validate(version_id=version_id)
    if version is not None:
        logger.info("version %s validated: %s", version_id, version.state)
        return version.state
    return None


@shared_task(
    name="registry.version_validation_sweep",
    acks_late=True,
    # Cheap and periodic: a failed run is simply the next run's work.
    soft_time_limit=60,
    time_limit=90,
)
def version_validation_sweep_task() -> int:
    """Re-enqueue validations that were never picked up (lost message) or were abandoned."""
    version_ids = versions_needing_validation()
    for version_id in version_ids:
        version_validate_task.delay(version_id)
    if version_ids:
        logger.info("validation sweep re-enqueued %s version(s)", len(version_ids))
    return len(version_ids)
