"""Batch job writes: the job state machine, chunk claims and the join.

queued → preparing → running → joining → succeeded; any active state → failed;
queued/preparing/running → cancelled.

Every step is claimed by a conditional UPDATE with a lease (a token and an expiry), so a
redelivered task (acks_late) finds nothing to claim, and a step whose worker was killed is
claimed again once its lease expires (by the sweep). A chunk's output has one fixed name,
written to a temp name and renamed, and a chunk only counts once (its success is a
conditional UPDATE on the claim token, under the job's row lock): every input row appears
exactly once in the output however often a chunk ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
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
from batch.services import files, inputs, runner
from core.choices import AuditAction
from core.errors import InvalidInput, InvalidState, NotAllowed, NotFound
from core.services import audit_record
from deployments.choices import BuildState
from deployments.services import build_ensure, version_bento_local
from registry.choices import VersionState
from registry.models import Alias, ModelVersion, RegisteredModel
from registry.services.artifacts import (
    artifact_delete_quietly,
    artifact_local_path,
    file_sha256,
    uploaded_file_on_disk,
)

logger = logging.getLogger(__name__)

J, C = JobState, ChunkState


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
    upload: UploadedFile | None = None,
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
            "state": J.QUEUED,
            "model": model.name,
            "version": version_number,
            "alias": alias,
            "input": name[:200],
            "schedule": schedule.name if schedule else None,
        },
    )
    return job


def _locked_jobs() -> Any:
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


def _set_state(
    job: BatchJob, to: str, *, actor: Any = None, reason: str = "", **fields: Any
) -> None:
    """Record a transition on a job row the caller holds locked."""
    before = job.state
    job.state = to
    job.state_changed_at = timezone.now()
    if to in (J.SUCCEEDED, J.FAILED, J.CANCELLED):
        job.finished_at = job.state_changed_at
        job.step_token = None
    for name, value in fields.items():
        setattr(job, name, value)
    job.save()
    after: dict[str, Any] = {"state": to}
    if job.version_id:
        after["version"] = job.version.number
    if to == J.SUCCEEDED:
        after["rows"] = job.output_rows
    audit_record(
        actor=actor,
        action=AuditAction.BATCH_JOB_STATE_CHANGED,
        obj=job,
        reason=reason[:500],
        before={"state": before},
        after=after,
    )
    if to in (J.FAILED, J.CANCELLED):
        BatchChunk.objects.filter(job=job, state__in=[C.PENDING, C.RUNNING]).update(
            state=C.CANCELLED, claim_token=None, lease_expires_at=None
        )
        transaction.on_commit(lambda: files.job_files_delete(job.pk))


def batch_job_fail(*, job_id: int, error: str, details: dict[str, Any] | None = None) -> BatchJob:
    """Fail an active job with a message people can act on; its remaining chunks stop."""
    with transaction.atomic():
        job = _locked_jobs().get(pk=job_id)
        if job.state in ACTIVE_JOB_STATES:
            logger.warning("batch job %s failed: %s", job_id, error)
            _set_state(job, J.FAILED, reason=error, error=error[:5000], error_details=details or {})
    return job


@transaction.atomic
def batch_job_cancel(*, job: BatchJob, actor: User | None, reason: str = "") -> BatchJob:
    """Stop a job: no further chunk starts; chunks already predicting are discarded."""
    job = _locked_jobs().get(pk=job.pk)
    if job.state not in CANCELLABLE_JOB_STATES:
        raise InvalidState(f"Batch job {job.pk} is {job.state}; it can no longer be cancelled.")
    _set_state(job, J.CANCELLED, actor=actor, reason=reason or "cancelled")
    return job


# --- prepare: resolve the version, stage the input, create the chunks ------------------------


def _claim_step(job_id: int, *, start: str, to: str) -> uuid.UUID | None:
    """Claim the prepare or join step: unclaimed in ``start``, or ``to`` with a dead lease."""
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


def _resolve_version(job: BatchJob) -> ModelVersion:
    if job.version_id:  # resolved by an earlier attempt of this step: what ran stays fixed
        return job.version
    if job.requested_version_id:
        version = job.requested_version
    else:
        alias = (
            Alias.objects.select_related("version").filter(model=job.model, name=job.alias).first()
        )
        if alias is None:
            raise InvalidInput(f"{job.model.name} has no alias {job.alias!r} any more.")
        version = alias.version
    if version.state != VersionState.APPROVED:
        raise InvalidInput(f"{version} is {version.state}; batch jobs run approved versions only.")
    BatchJob.objects.filter(pk=job.pk, version__isnull=True).update(version=version)
    job.refresh_from_db()
    return job.version


def _open_input(job: BatchJob) -> Any:
    if job.input_source == InputSource.PATH:
        return inputs.input_path_open(job.input_path)
    return _open_stored(job.input_path)


class _open_stored:
    def __init__(self, name: str) -> None:
        self._local = artifact_local_path(name)

    def __enter__(self) -> Any:
        path = self._local.__enter__()
        self._handle = path.open("rb")
        return self._handle

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()
        self._local.__exit__(*exc)


def _claim_staging(job_id: int) -> uuid.UUID | None:
    """Claim the rest of a running job's staging from a stager that stopped renewing its
    lease (its worker died)."""
    token = uuid.uuid4()
    claimed = BatchJob.objects.filter(
        pk=job_id,
        state=J.RUNNING,
        chunks_staged__lt=F("chunks_total"),
        step_lease_expires_at__lt=timezone.now(),
    ).update(step_token=token, step_lease_expires_at=_lease())
    return token if claimed else None


def batch_job_prepare(*, job_id: int, follow: bool = False) -> BatchJob:
    """queued → preparing → running: resolve the version (once), make sure its Bento is
    built, validate the input, create the chunks and stage their rows.

    An input whose every row must be read to be validated is staged whole first; one whose
    Parquet footer answers every check is staged chunk by chunk, each chunk claimable (and
    enqueued) once staged. With ``follow`` (the prepare task) this worker then runs the
    job's chunks itself, as a chunk task does, staging the rest while its child predicts:
    the model starts after one chunk is staged, not after the whole input and a trip
    through the queue. Also resumes the staging of a running job whose stager died.
    """
    token = _claim_step(job_id, start=J.QUEUED, to=J.PREPARING)
    if token is None:
        token = _claim_staging(job_id)
        if token is not None:
            with _Stager(BatchJob.objects.get(pk=job_id), token) as staging:
                staging.run()
        return BatchJob.objects.get(pk=job_id)
    job = BatchJob.objects.select_related("model", "version", "requested_version").get(pk=job_id)
    try:
        version = _resolve_version(job)
    except InvalidInput as exc:
        return batch_job_fail(job_id=job_id, error=exc.message)
    build = build_ensure(version=version)
    if build.state == BuildState.FAILED:
        return batch_job_fail(
            job_id=job_id, error=f"the Bento of {version} failed to build: {build.error}"
        )
    if build.state != BuildState.SUCCEEDED:
        from deployments.tasks import build_run_task

        # Wait for the build without holding a worker: hand the step back and look again.
        BatchJob.objects.filter(pk=job_id, step_token=token).update(state=J.QUEUED, step_token=None)
        build_run_task.delay(build.pk)  # harmless if one runs already (the build is claimed)
        _enqueue("prepare", job_id, countdown=settings.MODELYARD_BATCH_BUILD_POLL_SECONDS)
        return BatchJob.objects.get(pk=job_id)
    try:
        with _open_input(job) as handle:
            fmt, header = inputs.input_header(handle)
            plan = inputs.input_plan(version=version, header=header, id_column=job.id_column)
            total = (
                inputs.parquet_rows_known_valid(handle=handle, plan=plan)
                if fmt == "parquet"
                else None
            )
            staged = total is None
            if staged:  # every row is read (and checked) before any chunk runs
                total = 0
                chunks = inputs.input_chunks(
                    handle=handle, fmt=fmt, plan=plan, header=header, chunk_rows=job.chunk_rows
                )
                for index, batch in enumerate(chunks):
                    files.staged_write(job_id, index, batch)
                    total += batch.num_rows
                if not total:
                    raise InvalidInput("The input has a header but no rows.", code="empty_input")
    except (InvalidInput, NotAllowed) as exc:
        return batch_job_fail(job_id=job_id, error=exc.message, details=exc.details or {})
    except Exception as exc:  # a corrupt file fails the same way on every retry: say so once
        logger.exception("batch job %s: staging its input failed", job_id)
        return batch_job_fail(
            job_id=job_id, error=f"The input could not be read: {type(exc).__name__}: {exc}"
        )
    assert total is not None
    size = job.chunk_rows
    count = -(-total // size)
    if count > settings.MODELYARD_BATCH_MAX_CHUNKS:
        least = -(-total // settings.MODELYARD_BATCH_MAX_CHUNKS)
        return batch_job_fail(
            job_id=job_id,
            error=f"{total:,} rows in chunks of {size:,} would make {count:,} chunks; at most "
            f"{settings.MODELYARD_BATCH_MAX_CHUNKS:,} are allowed (use chunk_rows >= {least:,}).",
        )
    with transaction.atomic():
        job = _locked_jobs().get(pk=job_id)
        if job.state != J.PREPARING or job.step_token != token:
            if job.state not in ACTIVE_JOB_STATES:  # cancelled while staging
                transaction.on_commit(lambda: files.job_files_delete(job_id))
            return job  # or the lease was lost to the worker that now prepares it
        BatchChunk.objects.filter(job=job).delete()  # left by an attempt that lost its lease
        BatchChunk.objects.bulk_create(
            BatchChunk(job=job, index=i, row_start=i * size, row_stop=min(total, (i + 1) * size))
            for i in range(count)
        )
        _set_state(
            job,
            J.RUNNING,
            reason=f"{total:,} rows in {count} chunk(s) on {version}",
            bento_tag=build.bento_tag,
            staged_path=files.staged_dir(job_id),
            total_rows=total,
            chunks_total=count,
            chunks_staged=count if staged else 0,
            started_at=timezone.now(),
            # Staging chunk by chunk keeps the step, its lease renewed with every chunk.
            step_token=None if staged else token,
            step_lease_expires_at=None if staged else _lease(),
        )
        chunk_ids = list(BatchChunk.objects.filter(job=job).values_list("pk", flat=True))
        if staged:
            transaction.on_commit(lambda: _enqueue_chunks(chunk_ids))
    with contextlib.ExitStack() as stack:
        # Following, this run claims the first chunk itself: it needs no message (the sweep
        # sends one if this worker dies first).
        staging = (
            None
            if staged
            else stack.enter_context(_Stager(job, token, chunk_ids, unsent=0 if follow else None))
        )
        if not follow:
            if staging is not None:
                staging.run()
        elif staging is None or staging.step():  # the first chunk staged: run it, and on
            outcome = batch_chunk_run(chunk_id=chunk_ids[0], follow=True, staging=staging)
            logger.info("batch chunk %s: %s %s", chunk_ids[0], outcome.status, outcome.detail)
        if staging is not None:  # what the run left (its first chunk went to another worker)
            staging.run()
    return BatchJob.objects.get(pk=job_id)


class _Stager:
    """Stages a running job's chunks one by one (resuming after those already staged): each
    chunk's rows are written, then made claimable and enqueued. The step's lease is renewed
    with every chunk; a cancelled or failed job, or a lost lease, stops it."""

    def __init__(
        self,
        job: BatchJob,
        token: uuid.UUID,
        chunk_ids: list[int] | None = None,
        unsent: int | None = None,
    ) -> None:
        self.job_id, self.token = job.pk, token
        self.unsent = unsent  # the chunk whose message is not sent: its stager runs it
        self.next_index = job.chunks_staged
        self.total, self.count, self.size = job.total_rows, job.chunks_total, job.chunk_rows
        self.active = self.next_index < self.count
        self._job = job
        self._stack = contextlib.ExitStack()
        self._chunks: Any = None
        self._ids = dict(enumerate(chunk_ids)) if chunk_ids is not None else None

    def __enter__(self) -> _Stager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def run(self) -> None:
        while self.step():
            pass

    def step(self) -> bool:
        """Stage the next chunk; whether it was (False once staging has ended)."""
        if not self.active:
            return False
        try:
            if self._chunks is None:
                self._chunks = self._open()
            index = self.next_index
            batch = next(self._chunks, None)
            expected = min(self.total, (index + 1) * self.size) - index * self.size
            if batch is None or batch.num_rows != expected:
                found = "ended" if batch is None else f"gave {batch.num_rows:,} rows"
                raise InvalidInput(
                    f"The input changed while it was read: chunk {index} {found}, "
                    f"{expected:,} rows were expected."
                )
            files.staged_write(self.job_id, index, batch)
        except (InvalidInput, NotAllowed) as exc:
            return self._stop(exc.message, exc.details or {})
        except Exception as exc:
            logger.exception("batch job %s: staging its input failed", self.job_id)
            return self._stop(f"The input could not be read: {type(exc).__name__}: {exc}", {})
        last = index + 1 == self.count
        marked = BatchJob.objects.filter(pk=self.job_id, state=J.RUNNING, step_token=self.token)
        # The last chunk hands the step back in the same write that makes it claimable: the
        # join, claimed once that chunk is counted, needs the step free.
        done = marked.update(
            chunks_staged=index + 1,
            step_token=None if last else self.token,
            step_lease_expires_at=None if last else _lease(),
        )
        if not done:  # cancelled, failed or taken over: its files may already be gone
            self.active = False
            ended = BatchJob.objects.filter(pk=self.job_id).exclude(state__in=ACTIVE_JOB_STATES)
            if ended.exists():
                files.job_files_delete(self.job_id)
            return False
        self.next_index, self.active = index + 1, not last
        if index != self.unsent:
            assert self._ids is not None  # loaded with the input
            chunk_id = self._ids[index]
            transaction.on_commit(lambda: _enqueue_chunks([chunk_id]))
        return True

    def _open(self) -> Any:
        handle = self._stack.enter_context(_open_input(self._job))
        version = ModelVersion.objects.get(pk=self._job.version_id)
        fmt, header = inputs.input_header(handle)
        plan = inputs.input_plan(version=version, header=header, id_column=self._job.id_column)
        chunks = inputs.input_chunks(
            handle=handle, fmt=fmt, plan=plan, header=header, chunk_rows=self.size
        )
        for _ in range(self.next_index):  # resuming: those are staged already
            next(chunks)
        if self._ids is None:
            self._ids = dict(
                BatchChunk.objects.filter(job_id=self.job_id).values_list("index", "pk")
            )
        return chunks

    def _stop(self, error: str, details: dict[str, Any]) -> bool:
        self.active = False
        batch_job_fail(job_id=self.job_id, error=error, details=details)
        return False


# --- chunks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkOutcome:
    status: str  # done | skipped | retry | failed
    detail: str = ""
    joining: bool = False  # this chunk was the job's last: it is to be joined now


def _claim_chunk(chunk_id: int, worker: str) -> uuid.UUID | None:
    token, now = uuid.uuid4(), timezone.now()
    # The job's conditions go in an EXISTS, not a join: Django turns an UPDATE over a join
    # into "WHERE id IN (SELECT ... WHERE state = 'pending' ...)", and PostgreSQL does not
    # re-check that subquery once the row lock it waited for is released, so two workers
    # claiming at once could both take the chunk (seen in the 2-worker benchmark: one run
    # computed a chunk the other counted). Conditions on the row itself are re-checked.
    claimable_job = BatchJob.objects.filter(
        pk=OuterRef("job_id"), state=J.RUNNING, chunks_staged__gt=OuterRef("index")
    )
    claimed = (
        BatchChunk.objects.filter(pk=chunk_id)
        .filter(Q(state=C.PENDING) | Q(state=C.RUNNING, lease_expires_at__lt=now))
        .filter(Exists(claimable_job))
        .update(
            state=C.RUNNING,
            claim_token=token,
            lease_expires_at=_lease(),
            attempts=F("attempts") + 1,
            started_at=now,
            worker=worker[:200],
        )
    )
    return token if claimed else None


class _LeaseKeeper:
    """Extends the leases of the chunks a worker holds while they run, so only a dead
    worker's chunks expire."""

    def __init__(self) -> None:
        self._held: dict[int, uuid.UUID] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, chunk_id: int, token: uuid.UUID) -> None:
        with self._lock:
            self._held[chunk_id] = token

    def discard(self, chunk_id: int) -> None:
        with self._lock:
            self._held.pop(chunk_id, None)

    def _run(self) -> None:
        interval = settings.MODELYARD_BATCH_LEASE_SECONDS / 3
        try:
            while not self._stop.wait(interval):
                with self._lock:
                    held = list(self._held.items())
                for chunk_id, token in held:
                    BatchChunk.objects.filter(
                        pk=chunk_id, claim_token=token, state=C.RUNNING
                    ).update(lease_expires_at=_lease())
        except Exception:  # a missed renewal only risks a harmless duplicate run
            logger.exception("renewing the leases of chunks %s failed", list(self._held))
        finally:
            connection.close()

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


# Chunks in one child at once: one predicting, the next read ahead by the child meanwhile.
PIPELINE_DEPTH = 2


@dataclass
class _Flight:
    """A chunk sent to the child and not yet answered, with its output's temporary name."""

    chunk: BatchChunk
    token: uuid.UUID
    output: files.PendingWrite | None  # None: the chunk never reached the child
    timings: dict[str, float]
    sent: float
    # Holds the staged input's local path (a temporary copy with an object store).
    source: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @classmethod
    def unsent(cls, chunk: BatchChunk, token: uuid.UUID) -> _Flight:
        """A claimed chunk that never reached the child (nothing to rename or drop)."""
        return cls(chunk, token, None, {}, time.monotonic())

    def abandon(self, exc: BaseException) -> None:
        """Drop the temporary file: nothing half-written stays."""
        self.source.close()
        if self.output is not None:
            self.output.abandon(exc)


def _chunk_send(
    child: runner.BatchChild, job: BatchJob, chunk: BatchChunk, token: uuid.UUID
) -> _Flight:
    """Hand a claimed chunk to the child: it maps its staged rows and writes the output to a
    temporary name checked here (only paths and a summary cross the pipe)."""
    output = files.PendingWrite(files.chunk_name(job.pk, chunk.index))
    flight = _Flight(chunk, token, output, {}, time.monotonic())
    try:
        name, batch = files.staged_source(job.staged_path, job.pk, chunk.index)
        staged = flight.source.enter_context(artifact_local_path(name))
        source, target = files.child_paths_check(
            job_id=job.pk, input_path=staged, output_path=output.path
        )
        child.chunk_send(
            input_path=source,
            batch_index=batch,
            rows=chunk.rows,
            output_path=target,
            id_column=job.id_column,
            probabilities=job.probabilities,
        )
    except BaseException as exc:
        flight.abandon(exc)
        raise
    return flight


def _chunk_collect(
    child: runner.BatchChild, flight: _Flight, since: float, join_here: bool
) -> ChunkOutcome:
    """Wait for the oldest chunk's reply, rename its file into place and count it once."""
    summary = child.chunk_reply(timeout=settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS)
    flight.source.close()
    now = time.monotonic()
    flight.timings["child_run"] = round(now - since, 4)
    flight.timings.update(summary.get("timings") or {})
    chunk = flight.chunk
    if summary.get("rows") != chunk.rows:  # raised before the rename: no file appears
        wrote = summary.get("rows")
        raise runner.ChildError(f"the child wrote {wrote} rows, expected {chunk.rows}")
    assert flight.output is not None  # collected flights were sent
    flight.output.commit()  # a computed-twice chunk replaces one file
    flight.timings["rename"] = round(time.monotonic() - now, 4)
    seconds = time.monotonic() - since
    outcome = _chunk_finish(chunk, flight.token, chunk.rows, seconds, join_here=join_here)
    return ChunkOutcome(outcome.status, f"{outcome.detail} {flight.timings}", outcome.joining)


def _where(chunk: BatchChunk) -> dict[str, int]:
    return {"chunk": chunk.index, "row_start": chunk.row_start, "row_stop": chunk.row_stop}


def _chunk_failed(flight: _Flight, exc: BaseException) -> ChunkOutcome:
    """A chunk's attempt ended in ``exc``: the model's own error fails the job with the row
    range; anything else (the child died or hung, storage) is retried alone."""
    flight.abandon(exc)
    chunk = flight.chunk
    if isinstance(exc, runner.PredictError):
        error = f"rows {chunk.row_start}-{chunk.row_stop - 1} (chunk {chunk.index}): {exc}"
        _chunk_fail(chunk, flight.token, error)
        batch_job_fail(
            job_id=chunk.job_id,
            error=error,
            details=_where(chunk),
        )
        return ChunkOutcome("failed", error)
    logger.warning("batch chunk %s attempt failed: %s", chunk.pk, exc, exc_info=exc)
    return _chunk_transient(chunk, flight.token, f"{type(exc).__name__}: {exc}")


def _claim_next(job_id: int, worker: str, holding: int) -> tuple[BatchChunk, uuid.UUID] | None:
    """Claim the job's next chunk that nobody has tried yet (a retried chunk keeps the
    backoff of its own message).

    A run already ``holding`` chunks (one predicting) leaves the job's last untried chunk to
    another worker on the job: queued behind its own, the job would end with that worker
    idle (measured, 2 workers and 4 chunks: 3 chunks on one worker, 1 on the other)."""
    pending = BatchChunk.objects.filter(
        job_id=job_id, state=C.PENDING, attempts=0, index__lt=F("job__chunks_staged")
    )
    candidates = list(pending.order_by("index")[:4])  # their ranges are all the caller reads
    if holding and len(candidates) == 1:
        running = BatchChunk.objects.filter(job_id=job_id, state=C.RUNNING).count()
        if running > holding:
            return None
    for chunk in candidates:
        token = _claim_chunk(chunk.pk, worker)
        if token is not None:
            return chunk, token
    return None


def _child_ready(job: BatchJob) -> runner.BatchChild:
    assert job.version_id is not None  # resolved when the job was prepared, before any chunk
    return runner.child_for(
        bento=version_bento_local(version_id=job.version_id, bento_tag=job.bento_tag),
        start_timeout=settings.MODELYARD_BATCH_CHILD_START_TIMEOUT_SECONDS,
        threads=settings.MODELYARD_BATCH_CHILD_THREADS,
    )


def batch_chunk_run(
    *, chunk_id: int, worker: str = "", follow: bool = False, staging: _Stager | None = None
) -> ChunkOutcome:
    """Claim one chunk, predict it in this worker's child, write its file, count it once.

    With ``follow`` (the chunk task), the worker then goes on with the job's next untried
    chunks itself, keeping the next one queued in the child while it renames and counts the
    one before: the model never waits for the worker, the disk or the queue. It stops
    claiming after one chunk timeout, so the task's time limit still holds; their own
    messages, delivered later, find those chunks claimed and skip them. If it counts the
    job's last chunk, it joins the job too. The outcome is ``chunk_id``'s, with how many
    more chunks this run did.

    With ``staging`` (a job being staged chunk by chunk, run from its prepare task), the
    rest of the input is staged meanwhile: whenever the child is busy, and before claiming
    a chunk not staged yet. The run ends once staging has.
    """
    worker = worker or socket.gethostname()
    lead, token = chunk_id, _claim_chunk(chunk_id, worker)
    if token is None and follow:
        # Taken by a run that followed on with it: the message still means the job has
        # work, so it starts on the job's next untried chunk (a worker otherwise idles until
        # the message of a chunk nobody took reaches it).
        running = BatchChunk.objects.filter(pk=chunk_id, job__state=J.RUNNING)
        job_id = running.values_list("job_id", flat=True).first()  # None once the job ended
        claimed = _claim_next(job_id, worker, holding=0) if job_id else None
        if claimed is not None:
            lead, token = claimed[0].pk, claimed[1]
    if token is None:
        return ChunkOutcome("skipped", "not claimable (done, running elsewhere, or job inactive)")
    chunk = BatchChunk.objects.select_related("job__version").get(pk=lead)
    job = chunk.job
    began = time.monotonic()
    outcomes: dict[int, ChunkOutcome] = {}
    with _LeaseKeeper() as leases:
        leases.add(chunk.pk, token)
        try:
            child = _child_ready(job)
        except Exception as exc:  # no child: transient, like a dead one
            return _chunk_failed(_Flight.unsent(chunk, token), exc)
        flights: deque[_Flight] = deque()
        claimed: tuple[BatchChunk, uuid.UUID] | None = (chunk, token)
        since = began
        draft: _JobOutput | None = None  # the job's output, begun while its last chunk runs
        staging_on = staging.step if staging is not None else lambda: False
        try:
            while True:
                if claimed is not None:
                    try:
                        flights.append(_chunk_send(child, job, *claimed))
                    except Exception as exc:
                        outcomes[claimed[0].pk] = _chunk_failed(_Flight.unsent(*claimed), exc)
                    claimed = None
                following = follow and time.monotonic() - began < (
                    settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS
                )
                if following and child.alive and len(flights) < PIPELINE_DEPTH:
                    claimed = _claim_next(job.pk, worker, len(flights))
                    if claimed is not None:
                        leases.add(claimed[0].pk, claimed[1])
                        continue
                    if staging_on():  # one more chunk staged: it may be this run's next
                        continue
                if not flights:
                    if staging_on():  # the rest, for the workers they are sent to
                        continue
                    break
                # Staged while the child predicts, a few chunks ahead of this run rather
                # than all at once: a burst of staging beside the first chunk took the
                # model's core from it (its predict took 0.16 s for 0.11 s of CPU).
                ahead = flights[-1].chunk.index + PIPELINE_DEPTH
                while staging is not None and staging.next_index <= ahead:
                    if child.reply_ready() or not staging_on():
                        break
                if follow and draft is None and claimed is None and len(flights) == 1 and outcomes:
                    draft = _output_draft(job, flights[0].chunk)
                flight = flights.popleft()
                try:
                    outcome = _chunk_collect(child, flight, max(since, flight.sent), follow)
                except Exception as exc:
                    outcome = _chunk_failed(flight, exc)
                    if not child.alive:  # its queued chunks died with it
                        while flights:
                            lost = flights.popleft()
                            outcomes[lost.chunk.pk] = _chunk_failed(lost, exc)
                outcomes[flight.chunk.pk] = outcome
                if flight.chunk.pk != lead:  # the caller logs the first chunk's outcome
                    pk, status, detail = flight.chunk.pk, outcome.status, outcome.detail
                    logger.info("batch chunk %s: %s %s", pk, status, detail)
                since = time.monotonic()
                leases.discard(flight.chunk.pk)
        except BaseException as exc:
            if flights:  # interrupted (a time limit, the database): the child is out of step
                child.kill()
                for flight in flights:
                    flight.abandon(exc)
            if draft is not None:
                draft.abandon(exc)
            raise
    if any(outcome.joining for outcome in outcomes.values()):
        # This run counted the last chunk: join now, in this worker, rather than queue the
        # join behind the messages of the chunks it followed on with (each a quick skip).
        batch_job_join(job_id=job.pk, output=draft)
    elif draft is not None:  # the last chunk failed or went to another run: start over
        draft.abandon(RuntimeError("the job's last chunk was not counted here"))
    first = outcomes.pop(lead)
    if lead != chunk_id:
        first = ChunkOutcome(first.status, f"(taken; ran chunk {lead} instead) {first.detail}")
    if outcomes:
        more = ", ".join(o.status for o in outcomes.values())
        return ChunkOutcome(first.status, f"{first.detail}; then {len(outcomes)} more: {more}")
    return first


def _chunk_fail(chunk: BatchChunk, token: uuid.UUID, error: str) -> None:
    BatchChunk.objects.filter(pk=chunk.pk, claim_token=token).update(
        state=C.FAILED, error=error[:5000], finished_at=timezone.now(), claim_token=None
    )


def _chunk_transient(chunk: BatchChunk, token: uuid.UUID, error: str) -> ChunkOutcome:
    attempts = BatchChunk.objects.get(pk=chunk.pk).attempts
    if attempts >= settings.MODELYARD_BATCH_CHUNK_MAX_ATTEMPTS:
        message = (
            f"rows {chunk.row_start}-{chunk.row_stop - 1} (chunk {chunk.index}) failed "
            f"{attempts} times; last error: {error}"
        )
        _chunk_fail(chunk, token, message)
        batch_job_fail(
            job_id=chunk.job_id,
            error=message,
            details=_where(chunk),
        )
        return ChunkOutcome("failed", message)
    released = BatchChunk.objects.filter(pk=chunk.pk, claim_token=token, state=C.RUNNING).update(
        state=C.PENDING, claim_token=None, lease_expires_at=None, error=error[:5000]
    )
    if released:
        _enqueue_chunks(
            [chunk.pk], countdown=settings.MODELYARD_BATCH_RETRY_DELAY_SECONDS * attempts
        )
    return ChunkOutcome("retry", error)


def _chunk_finish(
    chunk: BatchChunk, token: uuid.UUID, rows: int, seconds: float, *, join_here: bool = False
) -> ChunkOutcome:
    """Count a chunk once; the last one moves the job to joining and has the join enqueued,
    unless the caller joins it here (``join_here``; the sweep re-enqueues a join whose
    worker died before claiming it)."""
    with transaction.atomic():
        # The job's row lock orders concurrent finishes: counters and the last-chunk check
        # see every earlier chunk.
        job = _locked_jobs().get(pk=chunk.job_id)
        if job.state != J.RUNNING:
            if job.state not in ACTIVE_JOB_STATES:  # its working files went (or go) already:
                transaction.on_commit(lambda: files.job_files_delete(job.pk))  # so does ours
            return ChunkOutcome("skipped", f"job is {job.state}")
        done = BatchChunk.objects.filter(pk=chunk.pk, claim_token=token, state=C.RUNNING).update(
            state=C.SUCCEEDED,
            finished_at=timezone.now(),
            seconds=seconds,
            claim_token=None,
            lease_expires_at=None,
            error="",
        )
        if not done:  # the lease was lost and another run counted (or will count) this chunk
            return ChunkOutcome("skipped", "lease lost; the chunk belongs to another run")
        job.rows_done += rows
        job.chunks_done += 1
        job.save(update_fields=["rows_done", "chunks_done"])
        last = job.chunks_done == job.chunks_total
        if last:
            _set_state(job, J.JOINING, reason="every chunk done")
            if not join_here:
                transaction.on_commit(lambda: _enqueue("join", job.pk))
    return ChunkOutcome("done", f"{rows} rows in {seconds:.2f}s", joining=last)


# --- join ----------------------------------------------------------------------------------


class _JobOutput:
    """A job's output being written: its chunk files appended in index order to one Parquet
    file, written straight to its final, unique storage name (no second copy)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.name = f"batch-outputs/{uuid.uuid4().hex}/output.parquet"
        self.next_index = 0
        self.rows = 0
        self._writer: Any = None
        self._file = files.PendingWrite(self.name)

    def append(self, chunk: BatchChunk) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if chunk.index != self.next_index:
            raise InvalidState(f"chunk {chunk.index} came where chunk {self.next_index} belongs")
        with (
            artifact_local_path(files.chunk_name(self.job_id, chunk.index)) as path,
            pa.memory_map(str(path)) as mapped,
        ):
            table = pa.ipc.open_file(mapped).read_all()
            if table.num_rows != chunk.rows:
                raise InvalidState(
                    f"chunk {chunk.index} holds {table.num_rows} rows, expected {chunk.rows}"
                )
            if self._writer is None:
                options = files.output_parquet_options(table)
                self._writer = pq.ParquetWriter(self._file.path, table.schema, **options)
            self._writer.write_table(table)
        self.rows += table.num_rows
        self.next_index += 1

    def close(self) -> str:
        """Finish the file and put it in place; its SHA-256."""
        if self._writer is not None:
            self._writer.close()
        sha256 = file_sha256(self._file.path)
        self._file.commit()
        return sha256

    def abandon(self, exc: BaseException) -> None:
        """Drop the unfinished file (nothing half-written stays)."""
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        self._file.abandon(exc)
        with contextlib.suppress(OSError):  # its folder was made for it alone
            os.rmdir(self._file.path.parent)


def _output_draft(job: BatchJob, last: BatchChunk) -> _JobOutput | None:
    """Start the job's output while its last chunk is still predicting: the chunks before
    it are all counted, so their files are final. None unless ``last`` is the one chunk of
    the job not done yet; the join appends the rest (batch_job_join(output=...))."""
    others = BatchChunk.objects.filter(job=job).exclude(pk=last.pk)
    if others.exclude(state=C.SUCCEEDED).exists():
        return None
    output = None
    try:
        output = _JobOutput(job.pk)
        for chunk in others.filter(index__lt=last.index).order_by("index"):
            output.append(chunk)
    except Exception as exc:  # the join starts over and reports it, under its claim
        logger.warning("batch job %s: starting its output early failed: %s", job.pk, exc)
        if output is not None:
            output.abandon(exc)
        return None
    return output


def batch_job_join(*, job_id: int, output: _JobOutput | None = None) -> BatchJob:
    """joining → succeeded: stream the chunk files in order into one output file (after
    those a caller already appended to ``output``, which this call then owns)."""
    token = _claim_step(job_id, start=J.JOINING, to=J.JOINING)
    if token is None:
        if output is not None:
            output.abandon(RuntimeError("the join belongs to another run"))
        return BatchJob.objects.get(pk=job_id)
    job = BatchJob.objects.select_related("model", "version").get(pk=job_id)
    try:
        output = output or _JobOutput(job_id)
        for chunk in BatchChunk.objects.filter(job=job, index__gte=output.next_index).order_by(
            "index"
        ):
            output.append(chunk)
        if output.rows != job.total_rows:
            raise InvalidState(
                f"the chunks hold {output.rows} rows; the input had {job.total_rows}"
            )
        sha256 = output.close()
    except InvalidState as exc:
        if output is not None:
            output.abandon(exc)
        return batch_job_fail(job_id=job_id, error=f"joining failed: {exc.message}")
    except BaseException as exc:
        if output is not None:
            output.abandon(exc)
        raise
    with transaction.atomic():
        job = _locked_jobs().get(pk=job_id)
        if job.state != J.JOINING or job.step_token != token:
            artifact_delete_quietly([output.name])  # another join (lease lost) owns the job
            return job
        _set_state(
            job,
            J.SUCCEEDED,
            reason=f"{output.rows:,} rows written",
            output_path=output.name,
            output_rows=output.rows,
            output_sha256=sha256,
        )
        transaction.on_commit(lambda: files.job_files_delete(job_id))
    return job


# --- sweep ---------------------------------------------------------------------------------


def batch_jobs_sweep() -> list[str]:
    """Recover work whose worker died or whose message was lost; return what was done."""
    now = timezone.now()
    actions: list[str] = []
    lease = timedelta(seconds=settings.MODELYARD_BATCH_LEASE_SECONDS)
    expired = list(
        BatchChunk.objects.filter(
            job__state=J.RUNNING, state=C.RUNNING, lease_expires_at__lt=now
        ).values_list("pk", flat=True)
    )
    # Released first, so the next claim starts clean; the claim would also take them as is.
    BatchChunk.objects.filter(pk__in=expired, state=C.RUNNING, lease_expires_at__lt=now).update(
        state=C.PENDING,
        claim_token=None,
        lease_expires_at=None,
        error="lease expired (worker lost)",
    )
    lost = list(
        BatchChunk.objects.filter(
            job__state=J.RUNNING, state=C.PENDING, index__lt=F("job__chunks_staged")
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
        Q(state=J.QUEUED, state_changed_at__lt=quiet)
        | Q(state=J.PREPARING, step_lease_expires_at__lt=now)
        # Staged chunk by chunk, and its stager stopped renewing the step: resume it.
        | Q(state=J.RUNNING, chunks_staged__lt=F("chunks_total"), step_lease_expires_at__lt=now)
    ).values_list("pk", flat=True):
        _enqueue("prepare", job_id)
        actions.append(f"job {job_id}: prepare re-enqueued")
    for job_id in BatchJob.objects.filter(
        Q(
            state=J.JOINING,
            step_token__isnull=True,
            state_changed_at__lt=now - timedelta(seconds=30),
        )
        | Q(state=J.JOINING, step_lease_expires_at__lt=now)
    ).values_list("pk", flat=True):
        _enqueue("join", job_id)
        actions.append(f"job {job_id}: join re-enqueued")
    return actions
