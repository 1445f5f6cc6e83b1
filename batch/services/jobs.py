"""Batch job writes: creating a job, its state machine and the sweep.

queued → preparing → running → joining → succeeded; any active state → failed;
queued/preparing/running → cancelled. Preparing (staging the input, creating the chunks)
is in ``staging``, running the chunks in ``chunks``, joining their files in ``join``.

Every step is claimed by a conditional UPDATE with a lease (a token and an expiry), so a
redelivered task (acks_late) finds nothing to claim, and a step whose worker was killed is
claimed again once its lease expires (by the sweep). A chunk's output has one fixed name,
written to a temp name and renamed, and a chunk only counts once (its success is a
conditional UPDATE on the claim token, under the job's row lock): every input row appears
exactly once in the output however often a chunk ran.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from accounts.models import User
from batch.choices import (
    ACTIVE_JOB_STATES,
    CANCELLABLE_JOB_STATES,
    ChunkState,
    InputSource,
    JobState,
)
from batch.models import BatchChunk, BatchJob, BatchSchedule
from batch.services import files, inputs
from core.choices import AuditAction
from core.errors import InvalidInput, InvalidState, NotFound
from core.services import audit_record
from core.state_machine import StateMachine
from registry.choices import VersionState
from registry.models import Alias, ModelVersion, RegisteredModel
from registry.services.artifacts import artifact_delete_quietly, uploaded_file_on_disk

logger = logging.getLogger(__name__)


# --- creating ------------------------------------------------------------------------------


def _version_for(model: RegisteredModel, version_number: int | None, alias: str) -> ModelVersion:
    if version_number is not None:
        version = ModelVersion.objects.filter(model=model, number=version_number).first()
        if version is None:
            raise NotFound(f"{model.name} has no version {version_number}.")
    else:
        found = Alias.objects.select_related("version").filter(model=model, name=alias).first()
        if found is None:
            raise NotFound(f"{model.name} has no alias {alias!r}.")
        version = found.version
    if version.state != VersionState.APPROVED:
        raise InvalidState(
            f"{version} is {version.state}; batch jobs run approved versions only.",
            code="version_not_approved",
        )
    return version


@transaction.atomic
def batch_job_create(
    *,
    model: RegisteredModel,
    actor: User | None,
    version_number: int | None = None,
    alias: str = "",
    upload: UploadedFile[bytes] | None = None,
    input_path: str = "",
    id_column: str = "",
    chunk_rows: int | None = None,
    probabilities: bool = False,
    schedule: BatchSchedule | None = None,
) -> BatchJob:
    """A queued job over an upload or an allowed path, its columns checked against the
    version (or the alias's current version; the alias is resolved again when it starts)."""
    if (version_number is None) == (not alias):
        raise InvalidInput("Give exactly one of 'version' and 'alias'.", code="version_or_alias")
    if (upload is None) == (not input_path):
        raise InvalidInput("Give exactly one of 'file' and 'input_path'.", code="input_required")
    if chunk_rows is not None and int(chunk_rows) < 0:
        raise InvalidInput("chunk_rows must be at least 1.")
    version = _version_for(model, version_number, alias)
    stored: list[str] = []
    if upload is not None:
        if not upload.size:
            raise InvalidInput("The input file is empty.", code="empty_input")
        with uploaded_file_on_disk(upload) as local, local.open("rb") as handle:
            fmt, plan = inputs.input_check(handle=handle, version=version, id_column=id_column)
        saved = files.input_store(upload, fmt=fmt)
        stored.append(saved)
        source, path, name = InputSource.UPLOAD, saved, upload.name or ""
    else:
        with inputs.input_path_open(input_path) as handle:
            fmt, plan = inputs.input_check(handle=handle, version=version, id_column=id_column)
        source, path, name = (
            InputSource.PATH,
            str(inputs.input_path_resolve(input_path)),
            input_path,
        )
    try:
        job = _job_insert(
            model=model,
            version=version,
            version_number=version_number,
            alias=alias,
            schedule=schedule,
            source=source,
            path=path,
            name=name,
            fmt=fmt,
            id_column=id_column,
            probabilities=probabilities,
            chunk_rows=int(chunk_rows or inputs.chunk_rows_default(plan)),
            actor=actor,
        )
    except BaseException:
        artifact_delete_quietly(stored)  # no job points at the stored copy
        raise
    transaction.on_commit(lambda: _enqueue("prepare", job.pk))
    return job


def _job_insert(
    *,
    model: RegisteredModel,
    version: ModelVersion,
    version_number: int | None,
    alias: str,
    schedule: BatchSchedule | None,
    source: str,
    path: str,
    name: str,
    fmt: str,
    id_column: str,
    probabilities: bool,
    chunk_rows: int,
    actor: User | None,
) -> BatchJob:
    job = BatchJob.objects.create(
        model=model,
        requested_version=version if version_number is not None else None,
        alias=alias,
        schedule=schedule,
        input_source=source,
        input_path=path,
        input_name=name[:1000],
        input_format=fmt,
        id_column=id_column,
        probabilities=probabilities,
        chunk_rows=chunk_rows,
        created_by=actor,
    )
    audit_record(
        actor=actor,
        action=AuditAction.BATCH_JOB_STATE_CHANGED,
        obj=job,
        after={
            "state": JobState.QUEUED,
            "model": model.name,
            "version": version_number,
            "alias": alias,
            "input": name[:200],
            "schedule": schedule.name if schedule else None,
        },
    )
    return job


def _locked_jobs() -> QuerySet[BatchJob]:
    # of=self: the version join is nullable, and only the job row needs the lock.
    return BatchJob.objects.select_for_update(of=("self",)).select_related("version")


def _enqueue(step: str, object_id: int, countdown: float | None = None) -> None:
    from batch import tasks

    task = {
        "prepare": tasks.batch_job_prepare_task,
        "chunk": tasks.batch_chunk_run_task,
        "join": tasks.batch_job_join_task,
    }[step]
    task.apply_async((object_id,), countdown=countdown)


def _enqueue_chunks(chunk_ids: list[int], countdown: float | None = None) -> None:
    BatchChunk.objects.filter(pk__in=chunk_ids).update(enqueued_at=timezone.now())
    for chunk_id in chunk_ids:
        _enqueue("chunk", chunk_id, countdown)


# --- transitions ---------------------------------------------------------------------------


def _lease(seconds: float | None = None) -> Any:
    return timezone.now() + timedelta(seconds=seconds or settings.MODELYARD_BATCH_LEASE_SECONDS)


# Every move a job makes. The claims (_claim_step, staging._claim_staging) write
# queued → preparing, preparing → preparing and joining → joining themselves; the rest go
# through _set_state, and the prepare hand-back (staging._build_ready) is preparing → queued.
JOB_STATES: StateMachine[BatchJob] = StateMachine(
    BatchJob,
    {
        JobState.QUEUED: {JobState.PREPARING, JobState.FAILED, JobState.CANCELLED},
        JobState.PREPARING: {
            JobState.PREPARING,
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.FAILED,
            JobState.CANCELLED,
        },
        JobState.RUNNING: {JobState.JOINING, JobState.FAILED, JobState.CANCELLED},
        JobState.JOINING: {JobState.JOINING, JobState.SUCCEEDED, JobState.FAILED},
        JobState.SUCCEEDED: set(),
        JobState.FAILED: set(),
        JobState.CANCELLED: set(),
    },
)


def _set_state(
    job: BatchJob,
    to: str,
    *,
    actor: Any = None,
    reason: str = "",
    token: uuid.UUID | None = None,
    **fields: Any,
) -> None:
    """Record a transition on a job row the caller holds locked; with ``token``, only while
    the caller still holds the step (its ``step_token``)."""
    before = job.state
    now = timezone.now()
    if to in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        fields = {"finished_at": now, "step_token": None, **fields}
    after: dict[str, Any] = {}
    if job.version is not None:  # no query when version_id is None, as before
        after["version"] = job.version.number
    if to == JobState.SUCCEEDED:
        after["rows"] = fields.get("output_rows", job.output_rows)
    moved = JOB_STATES.move(
        job,
        to,
        at=now,
        fields=fields,
        where=Q(step_token=token) if token is not None else None,
        actor=actor,
        audit_action=AuditAction.BATCH_JOB_STATE_CHANGED,
        reason=reason[:500],
        evidence=after,
    )
    if not moved:  # the caller's row lock and state/token check make this a bug, not a race
        raise InvalidState(
            f"Batch job {job.pk} is no longer {before} (or its step is another run's); "
            f"it did not become {to}.",
            details={"state": str(before), "requested": str(to)},
        )
    if to in (JobState.FAILED, JobState.CANCELLED):
        BatchChunk.objects.filter(
            job=job, state__in=[ChunkState.PENDING, ChunkState.RUNNING]
        ).update(state=ChunkState.CANCELLED, claim_token=None, lease_expires_at=None)
        transaction.on_commit(lambda: files.job_files_delete(job.pk))


def batch_job_fail(*, job_id: int, error: str, details: dict[str, Any] | None = None) -> BatchJob:
    """Fail an active job with a message people can act on; its remaining chunks stop."""
    with transaction.atomic():
        job = _locked_jobs().get(pk=job_id)
        if job.state in ACTIVE_JOB_STATES:
            logger.warning("batch job %s failed: %s", job_id, error)
            _set_state(
                job, JobState.FAILED, reason=error, error=error[:5000], error_details=details or {}
            )
    return job


@transaction.atomic
def batch_job_cancel(*, job: BatchJob, actor: User | None, reason: str = "") -> BatchJob:
    """Stop a job: no further chunk starts; chunks already predicting are discarded."""
    job = _locked_jobs().get(pk=job.pk)
    if job.state not in CANCELLABLE_JOB_STATES:
        raise InvalidState(f"Batch job {job.pk} is {job.state}; it can no longer be cancelled.")
    _set_state(job, JobState.CANCELLED, actor=actor, reason=reason or "cancelled")
    return job


def _claim_step(job_id: int, *, start: str, to: str) -> uuid.UUID | None:
    """Claim the prepare or join step: unclaimed in ``start``, or ``to`` with a dead lease."""
    # Not JOB_STATES.move: a claim works from a job id without reading the row, matches one
    # of two starting states, and re-claims from its own state when its lease has expired.
    token = uuid.uuid4()
    now = timezone.now()
    claimed = (
        BatchJob.objects.filter(pk=job_id)
        .filter(
            Q(state=start, step_token__isnull=True) | Q(state=to, step_lease_expires_at__lt=now)
        )
        .update(
            state=to,
            step_token=token,
            step_lease_expires_at=_lease(settings.MODELYARD_BATCH_STEP_LEASE_SECONDS),
            state_changed_at=now,
        )
    )
    return token if claimed else None


# --- sweep ---------------------------------------------------------------------------------


def batch_jobs_sweep() -> list[str]:
    """Recover work whose worker died or whose message was lost; return what was done."""
    now = timezone.now()
    actions: list[str] = []
    lease = timedelta(seconds=settings.MODELYARD_BATCH_LEASE_SECONDS)
    expired = list(
        BatchChunk.objects.filter(
            job__state=JobState.RUNNING, state=ChunkState.RUNNING, lease_expires_at__lt=now
        ).values_list("pk", flat=True)
    )
    # Released first, so the next claim starts clean; the claim would also take them as is.
    BatchChunk.objects.filter(
        pk__in=expired, state=ChunkState.RUNNING, lease_expires_at__lt=now
    ).update(
        state=ChunkState.PENDING,
        claim_token=None,
        lease_expires_at=None,
        error="lease expired (worker lost)",
    )
    lost = list(
        BatchChunk.objects.filter(
            job__state=JobState.RUNNING, state=ChunkState.PENDING, index__lt=F("job__chunks_staged")
        )
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - lease))
        .exclude(pk__in=expired)
        .values_list("pk", flat=True)
    )
    if expired or lost:
        _enqueue_chunks(sorted({*expired, *lost}))
        actions.append(f"re-enqueued {len(expired)} expired and {len(lost)} waiting chunk(s)")
    quiet = now - timedelta(seconds=settings.MODELYARD_BATCH_STEP_LEASE_SECONDS)
    for job_id in BatchJob.objects.filter(
        Q(state=JobState.QUEUED, state_changed_at__lt=quiet)
        | Q(state=JobState.PREPARING, step_lease_expires_at__lt=now)
        # Staged chunk by chunk, and its stager stopped renewing the step: resume it.
        | Q(
            state=JobState.RUNNING,
            chunks_staged__lt=F("chunks_total"),
            step_lease_expires_at__lt=now,
        )
    ).values_list("pk", flat=True):
        _enqueue("prepare", job_id)
        actions.append(f"job {job_id}: prepare re-enqueued")
    for job_id in BatchJob.objects.filter(
        Q(
            state=JobState.JOINING,
            step_token__isnull=True,
            state_changed_at__lt=now - timedelta(seconds=30),
        )
        | Q(state=JobState.JOINING, step_lease_expires_at__lt=now)
    ).values_list("pk", flat=True):
        _enqueue("join", job_id)
        actions.append(f"job {job_id}: join re-enqueued")
    return actions
