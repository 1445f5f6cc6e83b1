"""Batch writes. Jobs and chunks in ``jobs``, schedules in ``schedules``; the child process
client in ``runner``, input rules in ``inputs``, storage layout in ``files``."""

from batch.services.jobs import (
    ChunkOutcome,
    batch_chunk_run,
    batch_job_cancel,
    batch_job_create,
    batch_job_fail,
    batch_job_join,
    batch_job_prepare,
    batch_jobs_sweep,
)
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
