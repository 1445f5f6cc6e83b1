"""The child reads its chunk from the staged input and writes the output chunk itself.

Only paths and a summary cross the pipe; the worker checks the paths (the child runs model
code and must never be pointed outside the job's working files) and renames the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from django.core.files.storage import default_storage

from batch import services
from batch.engine import runner
from batch.models import BatchChunk
from batch.services import files
from tests.batch.conftest import csv_upload, input_frame


def _prepared(setup, rows=3_000, **kwargs):
    job = services.batch_job_create(
        model=setup["model"],
        actor=setup["owner"],
        version_number=1,
        upload=csv_upload(input_frame(rows)),
        chunk_rows=1_000,
        **kwargs,
    )
    services.batch_job_prepare(job_id=job.pk)
    job.refresh_from_db()
    return job


def _chunks_dir(job) -> Path:
    return Path(default_storage.path(f"{files.job_dir(job.pk)}/chunks"))


def test_the_child_writes_the_chunk_file_with_ids_and_probabilities(batch_setup):
    job = _prepared(batch_setup, id_column="row_id", probabilities=True)
    chunk = BatchChunk.objects.get(job=job, index=1)
    outcome = services.batch_chunk_run(chunk_id=chunk.pk)
    assert outcome.status == "done", outcome.detail
    # The child's own phases are reported with the worker's.
    assert "child_run" in outcome.detail and "'predict'" in outcome.detail
    with pa.memory_map(default_storage.path(files.chunk_name(job.pk, 1))) as mapped:
        written = pa.ipc.open_file(mapped).read_pandas()
    frame = input_frame(3_000).iloc[1_000:2_000]
    model = batch_setup["built"][1].trained.model
    assert list(written.columns) == ["row_id", "prediction", "probability_0", "probability_1"]
    assert written["row_id"].tolist() == list(range(1_000, 2_000))
    features = frame.drop(columns="row_id")
    assert np.array_equal(written["prediction"].to_numpy(), model.predict(features))
    proba = written[["probability_0", "probability_1"]].to_numpy()
    assert np.allclose(proba, model.predict_proba(features))
    # Written as Arrow IPC like every working file: one batch, no compression.
    with pa.memory_map(default_storage.path(files.chunk_name(job.pk, 1))) as mapped:
        reader = pa.ipc.open_file(mapped)
        assert reader.num_record_batches == 1 and reader.get_batch(0).num_rows == 1_000
    # Nothing half-written is left behind: only the renamed chunk file.
    assert sorted(p.name for p in _chunks_dir(job).iterdir()) == ["chunk-000001.arrow"]


def test_a_storage_failure_in_the_child_is_transient_and_keeps_the_child(batch_setup):
    job = _prepared(batch_setup, id_column="row_id")
    first, second, _ = BatchChunk.objects.filter(job=job).order_by("index")
    assert services.batch_chunk_run(chunk_id=first.pk).status == "done"
    child = runner._children["batchmodel:v1"]
    staged = Path(default_storage.path(files.staged_name(job.pk, 1)))
    target = _chunks_dir(job) / ".probe.tmp"
    with pytest.raises(runner.ChunkFileError, match="record batch 7"):
        child.chunk_run(
            input_path=staged,
            batch_index=7,
            rows=1_000,
            output_path=target,
            id_column="row_id",
            probabilities=False,
            timeout=30,
        )
    assert not target.exists()
    # The output file must be new: the child never overwrites an existing file.
    target.write_bytes(b"keep")
    with pytest.raises(runner.ChunkFileError, match="writing the output chunk"):
        child.chunk_run(
            input_path=staged,
            batch_index=0,
            rows=1_000,
            output_path=target,
            id_column="row_id",
            probabilities=False,
            timeout=30,
        )
    assert target.read_bytes() == b"keep"
    target.unlink()
    # The same child, still alive, runs the next chunk.
    assert services.batch_chunk_run(chunk_id=second.pk).status == "done"
    assert runner._children["batchmodel:v1"] is child and child.alive


def test_a_wrong_row_count_is_retried_and_writes_no_file(batch_setup, settings):
    settings.MODELYARD_BATCH_RETRY_DELAY_SECONDS = 0
    job = _prepared(batch_setup)
    chunk = BatchChunk.objects.get(job=job, index=0)
    # The staged file disagrees with the chunk row (one row fewer recorded).
    BatchChunk.objects.filter(pk=chunk.pk).update(row_stop=999)
    outcome = services.batch_chunk_run(chunk_id=chunk.pk)
    assert outcome.status == "retry" and "has 1000 rows, expected 999" in outcome.detail
    assert BatchChunk.objects.get(pk=chunk.pk).state == "pending"
    assert list(_chunks_dir(job).iterdir()) == []


def test_chunk_paths_handed_to_the_child_stay_in_the_jobs_files(batch_setup, tmp_path):
    job = _prepared(batch_setup)
    other = _prepared(batch_setup)
    staged = Path(default_storage.path(files.staged_name(job.pk, 0)))
    chunks = _chunks_dir(job)
    chunks.mkdir(parents=True, exist_ok=True)
    _chunks_dir(other).mkdir(parents=True, exist_ok=True)
    good = chunks / ".chunk-000000.arrow.abc.tmp"
    assert files.child_paths_check(job_id=job.pk, input_path=staged, output_path=good) == (
        staged.resolve(),
        good,
    )
    other_staged = Path(default_storage.path(files.staged_name(other.pk, 0)))
    link = chunks / "input-link.parquet"
    os.symlink("/etc/passwd", link)
    escape = chunks / ".." / ".." / "escape.tmp"
    cases = [
        (other_staged, good, "staged input"),  # another job's input
        (link, good, "staged input"),  # a symlink out of storage
        (staged, _chunks_dir(other) / "x.tmp", "chunk folder"),  # another job's folder
        (staged, escape, "chunk folder"),  # dot-dot out of the folder
        (staged, tmp_path / "x.tmp", "chunk folder"),
        (staged, link, "already exists"),  # never write through an existing name
    ]
    for source, target, message in cases:
        with pytest.raises(ValueError, match=message):
            files.child_paths_check(job_id=job.pk, input_path=source, output_path=target)
    with pytest.raises(FileNotFoundError):
        files.child_paths_check(
            job_id=job.pk, input_path=chunks / "missing.parquet", output_path=good
        )
