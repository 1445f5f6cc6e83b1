from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from batch import services
from batch.services.chunks import PIPELINE_DEPTH

logger = logging.getLogger(__name__)

# All batch tasks are routed to the `batch` queue (config/celery_app.py). Each claims its
# work with a conditional UPDATE and a lease, so a redelivered message does nothing twice.
_DB_BLIPS = (OperationalError, InterfaceError)  # a database restart: the claim makes retrying safe
# Nobody reads task results (state lives in the job rows): storing them would cost a Redis
# round trip per chunk.
_CHUNK_RUN_SECONDS = settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS * (PIPELINE_DEPTH + 1) + 60


@shared_task(
    name="batch.job_prepare",
    acks_late=True,
    ignore_result=True,  # redelivered if the worker dies; the lease lets the retry take over
    # Preparing (bounded by the step lease), then the job's chunks as a chunk task runs them
    # (staging the rest meanwhile), then maybe the join (bounded like the join task).
    soft_time_limit=settings.MODELYARD_BATCH_STEP_LEASE_SECONDS * 2 + _CHUNK_RUN_SECONDS,
    time_limit=settings.MODELYARD_BATCH_STEP_LEASE_SECONDS * 2 + _CHUNK_RUN_SECONDS + 60,
    autoretry_for=_DB_BLIPS,
    retry_backoff=True,
    max_retries=5,
)
def batch_job_prepare_task(job_id: int) -> str:
    """Resolve the job's version, validate its input, create and stage its chunks, then run
    them in this worker (others take the chunks they are sent meanwhile)."""
    job = services.batch_job_prepare(job_id=job_id, follow=True)
    logger.info("batch job %s: %s", job_id, job.state)
    return job.state


@shared_task(
    name="batch.chunk_run",
    # Redelivery after a lost worker is harmless: the chunk is claimed (pending→running)
    # before any work, and its success counts once. Transient failures (child crashed or
    # hung, storage blip) are re-enqueued by the service, counted in the chunk's attempts.
    acks_late=True,
    ignore_result=True,
    # It follows on with the job's next chunks for at most one chunk timeout, then waits
    # for those still in its child (each bounded by the chunk timeout), and may then join
    # the job (bounded like the join task).
    soft_time_limit=_CHUNK_RUN_SECONDS + settings.MODELYARD_BATCH_STEP_LEASE_SECONDS,
    time_limit=_CHUNK_RUN_SECONDS + settings.MODELYARD_BATCH_STEP_LEASE_SECONDS + 60,
    autoretry_for=_DB_BLIPS,
    retry_backoff=True,
    max_retries=5,
)
def batch_chunk_run_task(chunk_id: int) -> str:
    """Predict a chunk in this worker's long-lived child and write its output file, then
    go on with the job's next untried chunks while the child keeps predicting; join the
    job if this run finished its last chunk."""
    outcome = services.batch_chunk_run(chunk_id=chunk_id, follow=True)
    logger.info("batch chunk %s: %s %s", chunk_id, outcome.status, outcome.detail)
    return outcome.status


@shared_task(
    name="batch.job_join",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=settings.MODELYARD_BATCH_STEP_LEASE_SECONDS,
    time_limit=settings.MODELYARD_BATCH_STEP_LEASE_SECONDS + 60,
    autoretry_for=_DB_BLIPS,
    retry_backoff=True,
    max_retries=5,
)
def batch_job_join_task(job_id: int) -> str:
    """Join the job's chunk files, in order, into its output file."""
    job = services.batch_job_join(job_id=job_id)
    logger.info("batch job %s: %s", job_id, job.state)
    return job.state


@shared_task(
    name="batch.jobs_sweep",
    acks_late=True,
    ignore_result=True,
    # Periodic: a missed run is the next run's work; never let two pile up.
    soft_time_limit=60,
    time_limit=90,
    expires=30,
)
def batch_jobs_sweep_task() -> list[str]:
    """Re-enqueue chunks and steps whose worker died or whose message was lost."""
    actions = services.batch_jobs_sweep()
    for action in actions:
        logger.info("batch sweep: %s", action)
    return actions


@shared_task(
    name="batch.schedules_due",
    acks_late=True,
    ignore_result=True,
    # Periodic; each due schedule is claimed by a conditional UPDATE, so a duplicate tick
    # starts no second job.
    soft_time_limit=120,
    time_limit=150,
    expires=30,
)
def batch_schedules_due_task() -> list[int]:
    """Start the job of every schedule that is due."""
    jobs = services.batch_schedules_due()
    for job in jobs:
        logger.info("batch schedule %s started job %s", job.schedule_id, job.pk)
    return [job.pk for job in jobs]
