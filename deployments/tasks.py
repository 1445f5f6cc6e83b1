from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from deployments import services

logger = logging.getLogger(__name__)


@shared_task(
    name="deployments.build_run",
    # Redelivered if the worker dies mid-build; the claim (and the Bento marker) make a
    # second run reuse the first one's work.
    acks_late=True,
    soft_time_limit=1200,
    time_limit=1260,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=3,
)
def build_run_task(build_id: int) -> str:
    """Build (once) and export the Bento of a version; wakes rollouts waiting on it."""
    build = services.build_run(build_id=build_id)
    logger.info("build %s: %s", build_id, build.state)
    return build.state


@shared_task(
    name="deployments.rollout_advance",
    # Every step is idempotent and guarded by a conditional state change, so a redelivered
    # or duplicated message only repeats harmless work.
    acks_late=True,
    soft_time_limit=300,
    time_limit=330,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
)
def rollout_advance_task(rollout_id: int) -> str:
    """Run a rollout's next steps until it waits for a build or its bake timer, or ends."""
    rollout = services.rollout_advance(rollout_id=rollout_id)
    logger.info("rollout %s: %s", rollout_id, rollout.state)
    return rollout.state


@shared_task(
    name="deployments.reconcile",
    acks_late=True,
    # Periodic: a failed run is simply the next run's work; never let two pile up.
    soft_time_limit=120,
    time_limit=150,
    expires=60,
)
def deployments_reconcile_task() -> list[str]:
    """Restart crashed slots, republish routes, stop unneeded slots, resume stuck rollouts."""
    actions = services.deployments_reconcile()
    for action in actions:
        logger.info("reconcile: %s", action)
    return actions
