"""Preparing a batch job: queued → preparing → running.

The version is resolved once, its Bento built, the input validated and staged (as Arrow
IPC files of chunk rows, batch/services/files.py) and the chunks created. A Parquet input
whose footer answers every check is staged chunk by chunk (``_Stager``) while the chunks
already staged run.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from batch.choices import ACTIVE_JOB_STATES, InputSource, JobState
from batch.models import BatchChunk, BatchJob
from batch.services import files, inputs
from batch.services.chunks import batch_chunk_run
from batch.services.jobs import (
    JOB_STATES,
    _claim_step,
    _enqueue,
    _enqueue_chunks,
    _lease,
    _locked_jobs,
    _set_state,
    batch_job_fail,
)
from core.errors import InvalidInput, NotAllowed
from deployments.choices import BuildState
from deployments.models import Build
from deployments.services import build_ensure
from registry.choices import VersionState
from registry.models import Alias, ModelVersion
from registry.services.artifacts import artifact_local_path

logger = logging.getLogger(__name__)


class _Refused(Exception):
    """Why a job cannot run, for batch_job_fail: the same on every retry, said once."""

    def __init__(self, error: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error, self.details = error, details


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
    token = _claim_step(job_id, start=JobState.QUEUED, to=JobState.PREPARING)
    if token is None:
        _staging_resume(job_id)
        return BatchJob.objects.get(pk=job_id)
    job = BatchJob.objects.select_related("model", "version", "requested_version").get(pk=job_id)
    try:
        version = _resolve_version(job)
        build = _build_ready(job_id, token, version)
        if build is None:  # still building: the step was handed back, to look again later
            return BatchJob.objects.get(pk=job_id)
        total, staged = _input_read(job, version)
        count = _chunk_count(total, job.chunk_rows)
    except _Refused as exc:
        return batch_job_fail(job_id=job_id, error=exc.error, details=exc.details)
    created = _chunks_create(
        job_id, token, version=version, build=build, total=total, count=count, staged=staged
    )
    if created is not None:  # None: cancelled, or the lease lost to the worker preparing it
        _chunks_start(*created, token, staged=staged, follow=follow)
    return BatchJob.objects.get(pk=job_id)


def _staging_resume(job_id: int) -> None:
    """Stage the rest of a running job whose stager died, if this run can claim it."""
    token = _claim_staging(job_id)
    if token is not None:
        with _Stager(BatchJob.objects.get(pk=job_id), token) as staging:
            staging.run()


def _resolve_version(job: BatchJob) -> ModelVersion:
    # Resolved by an earlier attempt of this step: what ran stays fixed. (A null foreign key
    # reads as None without a query, as the version_id check did.)
    if job.version is not None:
        return job.version
    version = job.requested_version
    if version is None:
        alias = (
            Alias.objects.select_related("version").filter(model=job.model, name=job.alias).first()
        )
        if alias is None:
            raise _Refused(f"{job.model.name} has no alias {job.alias!r} any more.")
        version = alias.version
    if version.state != VersionState.APPROVED:
        raise _Refused(f"{version} is {version.state}; batch jobs run approved versions only.")
    BatchJob.objects.filter(pk=job.pk, version__isnull=True).update(version=version)
    job.refresh_from_db()
    assert job.version is not None  # set just above, or by a concurrent attempt
    return job.version


def _build_ready(job_id: int, token: uuid.UUID, version: ModelVersion) -> Build | None:
    """The version's built Bento; None while it builds (the step is handed back and the
    prepare enqueued again)."""
    build = build_ensure(version=version)
    if build.state == BuildState.FAILED:
        raise _Refused(f"the Bento of {version} failed to build: {build.error}")
    if build.state != BuildState.SUCCEEDED:
        from deployments.tasks import build_run_task

        # Wait for the build without holding a worker: hand the step back and look again.
        # The job is in preparing because this run's claim put it there; the token says
        # whether the step is still this run's (not cancelled, its lease not lost).
        held = BatchJob(pk=job_id, state=JobState.PREPARING)
        if not JOB_STATES.move(
            held, JobState.QUEUED, fields={"step_token": None}, where=Q(step_token=token)
        ):
            return None  # cancelled, or another run prepares it now: nothing to hand back
        build_run_task.delay(build.pk)  # harmless if one runs already (the build is claimed)
        _enqueue("prepare", job_id, countdown=settings.MODELYARD_BATCH_BUILD_POLL_SECONDS)
        return None
    return build


def _input_read(job: BatchJob, version: ModelVersion) -> tuple[int, bool]:
    """The input's row count, and whether its rows are staged already: an input whose
    every row must be read to be validated is; a Parquet one whose footer answers every
    check is staged later, chunk by chunk."""
    job_id = job.pk
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
        raise _Refused(exc.message, exc.details or {}) from exc
    except Exception as exc:  # a corrupt file fails the same way on every retry: say so once
        logger.exception("batch job %s: staging its input failed", job_id)
        raise _Refused(f"The input could not be read: {type(exc).__name__}: {exc}") from exc
    assert total is not None
    return total, staged


def _chunk_count(total: int, size: int) -> int:
    count = -(-total // size)
    if count > settings.MODELYARD_BATCH_MAX_CHUNKS:
        least = -(-total // settings.MODELYARD_BATCH_MAX_CHUNKS)
        raise _Refused(
            f"{total:,} rows in chunks of {size:,} would make {count:,} chunks; at most "
            f"{settings.MODELYARD_BATCH_MAX_CHUNKS:,} are allowed (use chunk_rows >= {least:,})."
        )
    return count


def _chunks_create(
    job_id: int,
    token: uuid.UUID,
    *,
    version: ModelVersion,
    build: Build,
    total: int,
    count: int,
    staged: bool,
) -> tuple[BatchJob, list[int]] | None:
    """preparing → running with the job's chunks, under its row lock; the running job and
    its chunk ids, or None if the step is no longer this run's."""
    with transaction.atomic():
        job = _locked_jobs().get(pk=job_id)
        if job.state != JobState.PREPARING or job.step_token != token:
            if job.state not in ACTIVE_JOB_STATES:  # cancelled while staging
                transaction.on_commit(lambda: files.job_files_delete(job_id))
            return None  # or the lease was lost to the worker that now prepares it
        size = job.chunk_rows
        BatchChunk.objects.filter(job=job).delete()  # left by an attempt that lost its lease
        BatchChunk.objects.bulk_create(
            BatchChunk(job=job, index=i, row_start=i * size, row_stop=min(total, (i + 1) * size))
            for i in range(count)
        )
        _set_state(
            job,
            JobState.RUNNING,
            token=token,
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
    return job, chunk_ids


def _chunks_start(
    job: BatchJob, chunk_ids: list[int], token: uuid.UUID, *, staged: bool, follow: bool
) -> None:
    """Stage what is left and, following (the prepare task), run the job's chunks here."""
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
    # Not JOB_STATES.move: it moves no state, only takes a dead stager's token and lease.
    token = uuid.uuid4()
    claimed = BatchJob.objects.filter(
        pk=job_id,
        state=JobState.RUNNING,
        chunks_staged__lt=F("chunks_total"),
        step_lease_expires_at__lt=timezone.now(),
    ).update(step_token=token, step_lease_expires_at=_lease())
    return token if claimed else None


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
        assert job.total_rows is not None  # a running job (the only one staged) has its count
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
        marked = BatchJob.objects.filter(
            pk=self.job_id, state=JobState.RUNNING, step_token=self.token
        )
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
        assert self._job.version_id is not None  # resolved before the job ran
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
