from __future__ import annotations

import logging
import time

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from deployments import services
from deployments.services.leases import LeaseHeld

logger = logging.getLogger(__name__)


@shared_task(
    name="deployments.build_run",
    # Redelivered if the worker dies mid-build (at once if only the pool child died, after
    # the broker's visibility timeout if the whole worker did): a copy that finds the build
    # under a live worker's lease returns; one whose worker died is re-queued by the sweep
    # as soon as the lease lapses (deployments/services/leases.py).
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
    bind=True,
    name="deployments.rollout_advance",
    # Every step is idempotent and guarded by a conditional state change, so a redelivered
    # or duplicated message only repeats harmless work; the rollout's lease keeps two
    # copies from running its steps side by side.
    acks_late=True,
    soft_time_limit=300,
    time_limit=330,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
)
def rollout_advance_task(self: Task, rollout_id: int) -> str:
    """Run a rollout's next steps until it waits for a build or its bake timer, or ends."""
    try:
        rollout = services.rollout_advance(rollout_id=rollout_id)
    except LeaseHeld as held:
        # Another worker is driving it: this copy may carry news the holder has already
        # looked past (a build that finished just now), so look again once that worker's
        # lease could have lapsed; bounded by the holder's own time limit.
        logger.info("rollout %s: %s; trying again later", rollout_id, held)
        raise self.retry(
            countdown=settings.MODELYARD_WORK_LEASE_SECONDS,
            max_retries=40,
            exc=held,
        ) from held
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


@shared_task(
    name="deployments.slot_release",
    acks_late=True,
    # A lost message is the reconcile sweep's work (it stops slots nothing needs).
    soft_time_limit=120,
    time_limit=150,
)
def slot_release_task(slot_id: int) -> str:
    """Stop a slot a rollout left behind (an aborted canary's), unless something needs it."""
    outcome = services.slot_release(slot_id=slot_id)
    logger.info("slot %s: %s", slot_id, outcome)
    return outcome


@shared_task(
    name="deployments.upstream_repair",
    # The gateway sends this the moment a replica refuses a connection. At most once: a lost
    # message is the reconcile sweep's work 15 s later, and a retry of a half-done restart
    # would only wait on the slot's lock to find the replica answering.
    acks_late=False,
    soft_time_limit=240,
    time_limit=270,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=3,
)
def upstream_repair_task(deployment: str, upstream: str, reason: str = "") -> str:
    """Check a replica the gateway could not reach; restart it if dead (one event)."""
    outcome = services.upstream_repair(deployment=deployment, upstream=upstream, reason=reason)
    logger.info("repair of %s (%s): %s", upstream, deployment, outcome)
    return outcome


@shared_task(
    name="deployments.autoscale",
    acks_late=True,
    # Periodic and short: a decision that did not run is the next tick's (2 s later); a
    # scale-up waits for new servers to be ready, hence the limit above a cold start.
    soft_time_limit=180,
    time_limit=210,
    expires=10,
)
def deployments_autoscale_task() -> list[str]:
    """Scale every autoscaled deployment's live slot by requests in flight per replica."""
    done = services.deployments_autoscale(now=time.time())
    for line in done:
        logger.info("autoscale: %s", line)
    return done
