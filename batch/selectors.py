from __future__ import annotations

from collections.abc import Iterable

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


def alias_versions(*, schedules: Iterable[BatchSchedule]) -> dict[tuple[int, str], int]:
    """(model id, alias) -> version number the alias points at, for many schedules at once."""
    from registry.models import Alias

    wanted = {(s.model_id, s.alias) for s in schedules}
    if not wanted:
        return {}
    rows = Alias.objects.filter(
        model_id__in={m for m, _ in wanted}, name__in={a for _, a in wanted}
    ).values_list("model_id", "name", "version__number")
    return {(m, a): n for m, a, n in rows if (m, a) in wanted}
