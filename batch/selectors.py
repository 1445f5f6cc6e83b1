from __future__ import annotations

from django.db.models import QuerySet

from batch.models import BatchChunk, BatchJob, BatchSchedule
from core.errors import NotFound


def batch_job_list() -> QuerySet[BatchJob]:
    return BatchJob.objects.select_related(
        "model", "version", "requested_version", "schedule", "created_by"
    ).order_by("-created_at", "-id")


def batch_job_get(*, job_id: int) -> BatchJob:
    job = batch_job_list().filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"No batch job {job_id}.")
    return job


def batch_job_chunks(*, job: BatchJob) -> QuerySet[BatchChunk]:
    return BatchChunk.objects.filter(job=job).order_by("index")


def batch_schedule_list() -> QuerySet[BatchSchedule]:
    return BatchSchedule.objects.select_related("model", "created_by").order_by("name")
