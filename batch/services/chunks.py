"""The chunk pipeline: a batch job's chunks predicted in this worker's long-lived child.

A run (``_ChunkRun``) keeps the next chunk queued in the child while it renames and counts
the one before, claims the job's next chunks as it goes (following) and stages the input
meanwhile (a job staged chunk by chunk). How a chunk is claimed and counted exactly once is
in ``chunk_claims``; the child itself in ``batch.engine``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from batch.choices import JobState
from batch.engine import runner
from batch.engine.bentos import child_ready
from batch.models import BatchChunk, BatchJob
from batch.services import files
from batch.services.chunk_claims import (
    ChunkOutcome,
    _chunk_fail,
    _chunk_finish,
    _chunk_transient,
    _claim_chunk,
    _claim_next,
    _LeaseKeeper,
    _where,
)
from batch.services.jobs import batch_job_fail
from batch.services.join import _JobOutput, _output_draft, batch_job_join
from registry.services.artifacts import artifact_local_path

if TYPE_CHECKING:
    from batch.services.staging import _Stager

logger = logging.getLogger(__name__)


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
    claimed = _claim_lead(chunk_id, worker, follow=follow)
    if claimed is None:
        return ChunkOutcome("skipped", "not claimable (done, running elsewhere, or job inactive)")
    lead, token = claimed
    chunk = BatchChunk.objects.select_related("job__version").get(pk=lead)
    run = _ChunkRun(chunk, token, worker=worker, follow=follow, staging=staging)
    with _LeaseKeeper() as leases:
        leases.add(chunk.pk, token)
        try:
            child = child_ready(chunk.job)
        except Exception as exc:  # no child: transient, like a dead one
            return _chunk_failed(_Flight.unsent(chunk, token), exc)
        run.pipeline(child, leases)
    run.join_or_drop()
    return run.outcome(chunk_id)


def _claim_lead(chunk_id: int, worker: str, *, follow: bool) -> tuple[int, uuid.UUID] | None:
    """Claim ``chunk_id`` or, following, the job's next untried chunk in its stead."""
    token = _claim_chunk(chunk_id, worker)
    if token is not None:
        return chunk_id, token
    if not follow:
        return None
    # Taken by a run that followed on with it: the message still means the job has
    # work, so it starts on the job's next untried chunk (a worker otherwise idles until
    # the message of a chunk nobody took reaches it).
    running = BatchChunk.objects.filter(pk=chunk_id, job__state=JobState.RUNNING)
    job_id = running.values_list("job_id", flat=True).first()  # None once the job ended
    claimed = _claim_next(job_id, worker, holding=0) if job_id else None
    return (claimed[0].pk, claimed[1]) if claimed is not None else None


class _ChunkRun:
    """One batch_chunk_run: chunks sent to the child ahead of their replies, collected in
    order and counted, the job's next chunks claimed (following) and its input staged
    (``staging``) while the child predicts."""

    def __init__(
        self,
        chunk: BatchChunk,
        token: uuid.UUID,
        *,
        worker: str,
        follow: bool,
        staging: _Stager | None,
    ) -> None:
        self.lead, self.job = chunk.pk, chunk.job
        self.worker, self.follow, self.staging = worker, follow, staging
        self.began = self.since = time.monotonic()
        self.outcomes: dict[int, ChunkOutcome] = {}
        self.flights: deque[_Flight] = deque()
        self.claimed: tuple[BatchChunk, uuid.UUID] | None = (chunk, token)
        self.draft: _JobOutput | None = None  # the job's output, begun while its last chunk runs

    def pipeline(self, child: runner.BatchChild, leases: _LeaseKeeper) -> None:
        """Run until nothing is in flight, to claim or to stage."""
        self.child, self.leases = child, leases
        try:
            while self._turn():
                pass
        except BaseException as exc:
            if self.flights:  # interrupted (a time limit, the database): the child is out of step
                child.kill()
                for flight in self.flights:
                    flight.abandon(exc)
            if self.draft is not None:
                self.draft.abandon(exc)
            raise

    def _turn(self) -> bool:
        """One turn: send what was claimed, claim or stage more, collect the oldest reply;
        False once there is nothing left to do."""
        self._send_claimed()
        if self._claim_more():
            return True
        if not self.flights:
            return self._stage_one()  # the rest, for the workers they are sent to
        self._stage_ahead()
        self._draft_begin()
        self._collect_oldest()
        return True

    def _send_claimed(self) -> None:
        if self.claimed is not None:
            try:
                self.flights.append(_chunk_send(self.child, self.job, *self.claimed))
            except Exception as exc:
                self.outcomes[self.claimed[0].pk] = _chunk_failed(
                    _Flight.unsent(*self.claimed), exc
                )
            self.claimed = None

    def _claim_more(self) -> bool:
        """Following, with room in the child: claim the job's next chunk, else stage one
        (it may be this run's next); whether either happened."""
        following = self.follow and time.monotonic() - self.began < (
            settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS
        )
        if not (following and self.child.alive and len(self.flights) < PIPELINE_DEPTH):
            return False
        self.claimed = _claim_next(self.job.pk, self.worker, len(self.flights))
        if self.claimed is not None:
            self.leases.add(self.claimed[0].pk, self.claimed[1])
            return True
        return self._stage_one()

    def _stage_one(self) -> bool:
        return self.staging is not None and self.staging.step()

    def _stage_ahead(self) -> None:
        """Stage while the child predicts, a few chunks ahead of this run rather than all
        at once: a burst of staging beside the first chunk took the model's core from it
        (its predict took 0.16 s for 0.11 s of CPU)."""
        ahead = self.flights[-1].chunk.index + PIPELINE_DEPTH
        while (
            self.staging is not None
            and self.staging.next_index <= ahead
            and not self.child.reply_ready()
            and self._stage_one()
        ):
            pass

    def _draft_begin(self) -> None:
        """Following, begin the job's output while the last chunk in flight predicts."""
        if (
            self.follow
            and self.draft is None
            and self.claimed is None
            and len(self.flights) == 1
            and self.outcomes
        ):
            self.draft = _output_draft(self.job, self.flights[0].chunk)

    def _collect_oldest(self) -> None:
        flight = self.flights.popleft()
        try:
            outcome = _chunk_collect(self.child, flight, max(self.since, flight.sent), self.follow)
        except Exception as exc:
            outcome = _chunk_failed(flight, exc)
            if not self.child.alive:  # its queued chunks died with it
                while self.flights:
                    lost = self.flights.popleft()
                    self.outcomes[lost.chunk.pk] = _chunk_failed(lost, exc)
        self.outcomes[flight.chunk.pk] = outcome
        if flight.chunk.pk != self.lead:  # the caller logs the first chunk's outcome
            pk, status, detail = flight.chunk.pk, outcome.status, outcome.detail
            logger.info("batch chunk %s: %s %s", pk, status, detail)
        self.since = time.monotonic()
        self.leases.discard(flight.chunk.pk)

    def join_or_drop(self) -> None:
        if any(outcome.joining for outcome in self.outcomes.values()):
            # This run counted the last chunk: join now, in this worker, rather than queue the
            # join behind the messages of the chunks it followed on with (each a quick skip).
            batch_job_join(job_id=self.job.pk, output=self.draft)
        elif self.draft is not None:  # the last chunk failed or went to another run: start over
            self.draft.abandon(RuntimeError("the job's last chunk was not counted here"))

    def outcome(self, chunk_id: int) -> ChunkOutcome:
        """``chunk_id``'s outcome (or the lead's taken in its stead), with the rest's."""
        outcomes = dict(self.outcomes)
        first = outcomes.pop(self.lead)
        if self.lead != chunk_id:
            first = ChunkOutcome(
                first.status, f"(taken; ran chunk {self.lead} instead) {first.detail}"
            )
        if outcomes:
            more = ", ".join(o.status for o in outcomes.values())
            return ChunkOutcome(first.status, f"{first.detail}; then {len(outcomes)} more: {more}")
        return first
