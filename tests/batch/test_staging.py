"""Staging chunk by chunk: a Parquet input whose footer answers every check starts
predicting after its first chunk is staged; only staged chunks run; a stager that dies is
resumed; a cancel or a corrupt row group stops it cleanly."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from batch import services
from batch.engine import runner
from batch.models import BatchChunk, BatchJob
from batch.services import files, inputs
from core.errors import InvalidInput
from tests.batch.conftest import input_frame, parquet_bytes, read_output


def _job(setup, payload: bytes, chunk_rows=1_000):
    return services.batch_job_create(
        model=setup["model"],
        actor=setup["owner"],
        version_number=1,
        upload=SimpleUploadedFile("input.parquet", payload),
        id_column="row_id",
        chunk_rows=chunk_rows,
    )


@pytest.fixture
def events(monkeypatch):
    """What happened, in order: each chunk staged, and each chunk sent to the child."""
    seen: list[tuple[str, int]] = []
    write, send = files.staged_write, runner.BatchChild.chunk_send

    def staged_write(job_id, index, batch):
        write(job_id, index, batch)
        seen.append(("staged", index))

    def chunk_send(self, **spec):
        send(self, **spec)
        seen.append(("sent", int(spec["input_path"].name[len("input-") : -len(".arrow")])))

    monkeypatch.setattr(files, "staged_write", staged_write)
    monkeypatch.setattr(runner.BatchChild, "chunk_send", chunk_send)
    return seen


def test_the_model_starts_on_the_first_staged_chunk(batch_setup, events):
    from batch.tasks import batch_job_prepare_task

    frame = input_frame(4_500)
    job = _job(batch_setup, parquet_bytes(frame))
    assert batch_job_prepare_task.apply(args=(job.pk,)).get() == "succeeded"
    # The first chunk went to the child before the rest of the input was read.
    assert events[:2] == [("staged", 0), ("sent", 0)]
    assert sorted(i for kind, i in events if kind == "staged") == [0, 1, 2, 3, 4]
    assert sorted(i for kind, i in events if kind == "sent") == [0, 1, 2, 3, 4]
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.chunks_staged, job.chunks_total, job.step_token) == (5, 5, None)
    output = read_output(job)
    model = batch_setup["built"][1].trained.model
    assert output["row_id"].tolist() == list(range(4_500))
    assert np.array_equal(
        output["prediction"].to_numpy(), model.predict(frame.drop(columns="row_id"))
    )


def test_an_input_that_needs_a_checked_cast_is_staged_whole_first(batch_setup, events):
    from batch.tasks import batch_job_prepare_task

    frame = input_frame(2_500)
    frame["visits"] = frame["visits"].astype("int64")  # int64 -> float64 may lose digits
    job = _job(batch_setup, parquet_bytes(frame))
    assert batch_job_prepare_task.apply(args=(job.pk,)).get() == "succeeded"
    assert events[:4] == [("staged", 0), ("staged", 1), ("staged", 2), ("sent", 0)]


def test_which_parquet_inputs_the_footer_validates():
    plan = inputs.InputPlan(
        features=["a", "b"], types={"a": "float64", "b": "int64"}, id_column="id"
    )

    def rows(**columns):
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns), buffer)
        buffer.seek(0)
        return inputs.parquet_rows_known_valid(handle=buffer, plan=plan)

    exact = {
        "a": pa.array([1.5, 2.0]),
        "b": pa.array([1, 2], pa.int32()),
        "id": pa.array(["x", "y"]),
    }
    assert rows(**exact) == 2
    assert rows(**{**exact, "a": pa.array([1.5, 2.0], pa.float32())}) == 2
    assert rows(**{**exact, "a": pa.array([1, 2], pa.int16())}) == 2
    assert rows(**{**exact, "a": pa.array([1, 2], pa.int64())}) is None  # past 2**53: read all
    assert rows(**{**exact, "b": pa.array([1, 2], pa.uint64())}) is None
    assert rows(**{**exact, "b": pa.array([1.0, 2.0])}) is None  # 1.5 would not cast
    with pytest.raises(InvalidInput, match="Column 'a' is string in the input"):
        rows(**{**exact, "a": pa.array(["1", "2"])})
    with pytest.raises(InvalidInput, match="no rows"):
        rows(a=pa.array([], pa.float64()), b=pa.array([], pa.int64()), id=pa.array([], pa.string()))


class _Killed(BaseException):
    """The worker died here (nothing in the job code catches it)."""


def test_a_stager_that_died_is_resumed_and_only_staged_chunks_run(batch_setup, monkeypatch):
    write = files.staged_write

    def dies_at_chunk_2(job_id, index, batch):
        if index == 2:
            raise _Killed
        write(job_id, index, batch)

    frame = input_frame(4_000)
    job = _job(batch_setup, parquet_bytes(frame))
    monkeypatch.setattr(files, "staged_write", dies_at_chunk_2)
    with pytest.raises(_Killed):
        services.batch_job_prepare(job_id=job.pk)
    monkeypatch.setattr(files, "staged_write", write)
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.state, job.chunks_staged, job.chunks_total) == ("running", 2, 4)
    chunks = list(BatchChunk.objects.filter(job=job).order_by("index"))
    assert services.batch_chunk_run(chunk_id=chunks[2].pk).status == "skipped"  # not staged
    # Its lease still runs: nobody takes the staging over, and the sweep only re-sends the
    # messages of the staged chunks.
    assert services.batch_job_prepare(job_id=job.pk).chunks_staged == 2
    assert services.batch_jobs_sweep() == ["re-enqueued 0 expired and 2 waiting chunk(s)"]
    BatchJob.objects.filter(pk=job.pk).update(
        step_lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert f"job {job.pk}: prepare re-enqueued" in services.batch_jobs_sweep()
    job = services.batch_job_prepare(job_id=job.pk)  # what that message does
    assert (job.state, job.chunks_staged, job.step_token) == ("running", 4, None)
    for chunk in chunks:  # the run that counts the last one joins the job
        assert services.batch_chunk_run(chunk_id=chunk.pk).status == "done"
    job = BatchJob.objects.get(pk=job.pk)
    assert job.state == "succeeded"
    output = read_output(job)
    assert output["row_id"].tolist() == list(range(4_000))
    model = batch_setup["built"][1].trained.model
    assert np.array_equal(
        output["prediction"].to_numpy(), model.predict(frame.drop(columns="row_id"))
    )


def test_cancelling_while_staging_stops_the_stager_and_leaves_no_files(batch_setup, monkeypatch):
    write = files.staged_write

    def cancelled_at_chunk_2(job_id, index, batch):
        if index == 2:
            services.batch_job_cancel(job=BatchJob.objects.get(pk=job_id), actor=None)
        write(job_id, index, batch)

    job = _job(batch_setup, parquet_bytes(input_frame(5_000)))
    monkeypatch.setattr(files, "staged_write", cancelled_at_chunk_2)
    job = services.batch_job_prepare(job_id=job.pk)
    assert (job.state, job.chunks_staged) == ("cancelled", 2)
    assert not default_storage.exists(files.job_dir(job.pk))
    states = set(BatchChunk.objects.filter(job=job).values_list("state", flat=True))
    assert states == {"cancelled"}


def test_a_corrupt_row_group_fails_the_job_cleanly_mid_staging(
    batch_setup, events, django_capture_on_commit_callbacks
):
    from batch.tasks import batch_job_prepare_task

    payload = bytearray(parquet_bytes(input_frame(3_000), row_group_size=1_000))
    column = pq.ParquetFile(io.BytesIO(bytes(payload))).metadata.row_group(2).column(0)
    start = column.data_page_offset
    payload[start : start + 16] = b"\xff" * 16  # the page header of the last row group
    job = _job(batch_setup, bytes(payload))
    with django_capture_on_commit_callbacks(execute=True):  # as committed in a worker
        assert batch_job_prepare_task.apply(args=(job.pk,)).get() == "failed"
    job = BatchJob.objects.get(pk=job.pk)
    assert job.error.startswith("The input could not be read:"), job.error
    assert ("sent", 0) in events  # it failed while the first chunks ran
    assert not default_storage.exists(files.job_dir(job.pk))
    assert not job.output_path
