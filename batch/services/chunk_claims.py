"""A batch chunk's claim, lease and count: the rules that put every input row in the
output exactly once, however often a chunk ran.

A chunk is claimed by a conditional UPDATE with a lease, which a thread renews while it
runs (``_LeaseKeeper``), so only a dead worker's chunks expire. It counts only on its claim
token, under the job's row lock (``_chunk_finish``); the last one counted moves the job to
joining.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from batch.choices import ACTIVE_JOB_STATES, ChunkState, JobState
from batch.models import BatchChunk, BatchJob
from batch.services import files
from batch.services.jobs import (
    _enqueue,
    _enqueue_chunks,
    _lease,
    _locked_jobs,
    _set_state,
    batch_job_fail,
)

logger = logging.getLogger(__name__)


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
        pk=OuterRef("job_id"), state=JobState.RUNNING, chunks_staged__gt=OuterRef("index")
    )
    claimed = (
        BatchChunk.objects.filter(pk=chunk_id)
        .filter(Q(state=ChunkState.PENDING) | Q(state=ChunkState.RUNNING, lease_expires_at__lt=now))
        .filter(Exists(claimable_job))
        .update(
            state=ChunkState.RUNNING,
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
                        pk=chunk_id, claim_token=token, state=ChunkState.RUNNING
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


def _claim_next(job_id: int, worker: str, holding: int) -> tuple[BatchChunk, uuid.UUID] | None:
    """Claim the job's next chunk that nobody has tried yet (a retried chunk keeps the
    backoff of its own message).

    A run already ``holding`` chunks (one predicting) leaves the job's last untried chunk to
    another worker on the job: queued behind its own, the job would end with that worker
    idle (measured, 2 workers and 4 chunks: 3 chunks on one worker, 1 on the other)."""
    pending = BatchChunk.objects.filter(
        job_id=job_id, state=ChunkState.PENDING, attempts=0, index__lt=F("job__chunks_staged")
    )
    candidates = list(pending.order_by("index")[:4])  # their ranges are all the caller reads
    if holding and len(candidates) == 1:
        running = BatchChunk.objects.filter(job_id=job_id, state=ChunkState.RUNNING).count()
        if running > holding:
            return None
    for chunk in candidates:
        token = _claim_chunk(chunk.pk, worker)
        if token is not None:
            return chunk, token
    return None


def _where(chunk: BatchChunk) -> dict[str, int]:
    return {"chunk": chunk.index, "row_start": chunk.row_start, "row_stop": chunk.row_stop}


def _chunk_fail(chunk: BatchChunk, token: uuid.UUID, error: str) -> None:
    BatchChunk.objects.filter(pk=chunk.pk, claim_token=token).update(
        state=ChunkState.FAILED, error=error[:5000], finished_at=timezone.now(), claim_token=None
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
    released = BatchChunk.objects.filter(
        pk=chunk.pk, claim_token=token, state=ChunkState.RUNNING
    ).update(state=ChunkState.PENDING, claim_token=None, lease_expires_at=None, error=error[:5000])
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
        if job.state != JobState.RUNNING:
            if job.state not in ACTIVE_JOB_STATES:  # its working files went (or go) already:
                transaction.on_commit(lambda: files.job_files_delete(job.pk))  # so does ours
            return ChunkOutcome("skipped", f"job is {job.state}")
        done = BatchChunk.objects.filter(
            pk=chunk.pk, claim_token=token, state=ChunkState.RUNNING
        ).update(
            state=ChunkState.SUCCEEDED,
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
            _set_state(job, JobState.JOINING, reason="every chunk done")
            if not join_here:
                transaction.on_commit(lambda: _enqueue("join", job.pk))
    return ChunkOutcome("done", f"{rows} rows in {seconds:.2f}s", joining=last)
