"""Joining a batch job: its chunk files appended in index order to one output file.

joining → succeeded, claimed as a step (jobs._claim_step). The output may be begun while
the job's last chunk still predicts (``_output_draft``, from the chunk pipeline); the join
then appends the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Any

from django.db import transaction

from batch.choices import ChunkState, JobState
from batch.models import BatchChunk, BatchJob
from batch.services import files
from batch.services.jobs import _claim_step, _locked_jobs, _set_state, batch_job_fail
from core.errors import InvalidState
from registry.services.artifacts import artifact_delete_quietly, artifact_local_path, file_sha256

logger = logging.getLogger(__name__)


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
    if others.exclude(state=ChunkState.SUCCEEDED).exists():
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
    token = _claim_step(job_id, start=JobState.JOINING, to=JobState.JOINING)
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
        if job.state != JobState.JOINING or job.step_token != token:
            artifact_delete_quietly([output.name])  # another join (lease lost) owns the job
            return job
        _set_state(
            job,
            JobState.SUCCEEDED,
            token=token,
            reason=f"{output.rows:,} rows written",
            output_path=output.name,
            output_rows=output.rows,
            output_sha256=sha256,
        )
        transaction.on_commit(lambda: files.job_files_delete(job_id))
    return job
