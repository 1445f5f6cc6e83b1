"""Batch writes. Creating jobs, their transitions and the sweep in ``jobs``; preparing
(staging the input) in ``staging``; the chunk pipeline in ``chunks`` (claims and counting in
``chunk_claims``); the join in ``join``; schedules in ``schedules``; input rules in
``inputs``, storage layout in ``files``. The child process and its client are in
``batch.engine``."""

from batch.services.chunk_claims import ChunkOutcome
from batch.services.chunks import batch_chunk_run
from batch.services.jobs import (
    batch_job_cancel,
    batch_job_create,
    batch_job_fail,
    batch_jobs_sweep,
)
from batch.services.join import batch_job_join
from batch.services.schedules import (
    batch_schedule_create,
    batch_schedule_delete,
    batch_schedule_rollback,
    batch_schedule_rollout,
    batch_schedule_run,
    batch_schedule_update,
    batch_schedules_due,
    cron_next,
)
from batch.services.staging import batch_job_prepare

__all__ = [
    "ChunkOutcome",
    "batch_chunk_run",
    "batch_job_cancel",
    "batch_job_create",
    "batch_job_fail",
    "batch_job_join",
    "batch_job_prepare",
    "batch_jobs_sweep",
    "batch_schedule_create",
    "batch_schedule_delete",
    "batch_schedule_rollback",
    "batch_schedule_rollout",
    "batch_schedule_run",
    "batch_schedule_update",
    "batch_schedules_due",
    "cron_next",
]
