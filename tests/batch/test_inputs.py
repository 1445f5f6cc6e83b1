"""Inputs are checked against the version's schema before any chunk runs, and server paths
are only read under the allowed roots."""

from __future__ import annotations

import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from batch import services
from batch.models import BatchChunk, BatchJob
from core.errors import InvalidInput, NotAllowed
from tests.batch.conftest import csv_upload, input_frame, parquet_bytes, run_job_inline


def _create(setup, **kwargs):
    return services.batch_job_create(
        model=setup["model"], actor=setup["owner"], version_number=1, **kwargs
    )


def test_missing_columns_are_named(batch_setup):
    frame = input_frame(10).drop(columns=["income", "score"])
    with pytest.raises(InvalidInput) as caught:
        _create(batch_setup, upload=csv_upload(frame))
    assert caught.value.code == "missing_columns"
    assert caught.value.details["missing"] == ["income", "score"]
    assert "income, score" in caught.value.message
    assert not BatchJob.objects.exists()


def test_missing_id_column_is_named(batch_setup):
    with pytest.raises(InvalidInput, match="id column 'key'"):
        _create(batch_setup, upload=csv_upload(input_frame(10)), id_column="key")


def test_wrong_type_in_the_first_rows_is_refused_at_submission(batch_setup):
    frame = input_frame(10).astype({"visits": object})
    frame.loc[3, "visits"] = "lots"
    with pytest.raises(InvalidInput) as caught:
        _create(batch_setup, upload=csv_upload(frame))
    assert caught.value.code == "wrong_type"
    assert caught.value.details["column"] == "visits"
    assert "'visits' does not hold float64 values" in caught.value.message
    assert "lots" in caught.value.message


def test_wrong_type_deep_in_the_file_fails_the_job_before_any_chunk_runs(batch_setup):
    frame = input_frame(60_000).astype({"age": object})
    frame.loc[59_000, "age"] = "forty"
    job = run_job_inline(_create(batch_setup, upload=csv_upload(frame), id_column="row_id"))
    assert job.state == "failed"
    assert "'age' does not hold float64 values" in job.error and "forty" in job.error
    assert not BatchChunk.objects.filter(job=job).exists()


def test_parquet_column_of_the_wrong_type_is_refused(batch_setup):
    frame = input_frame(10).astype({"score": str})
    with pytest.raises(InvalidInput) as caught:
        _create(batch_setup, upload=SimpleUploadedFile("x.parquet", parquet_bytes(frame)))
    assert caught.value.code == "wrong_type"
    assert caught.value.message.startswith("Column 'score' is large_string in the input")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The input file is empty."),
        (b"\n", "The input has no columns (the CSV header is empty)."),
        (b"row_id,age,income,visits,score\n", "The input has a header but no rows."),
    ],
)
def test_empty_inputs_are_clear_errors(batch_setup, content, message):
    try:
        job = _create(batch_setup, upload=SimpleUploadedFile("in.csv", content))
    except InvalidInput as exc:
        assert exc.message == message
        return
    job = run_job_inline(job)
    assert (job.state, job.error) == ("failed", message)


# --- allowed roots ---------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path, settings):
    inside, outside = tmp_path / "inbox", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    settings.MODELYARD_BATCH_ALLOWED_ROOTS = [str(inside)]
    return inside, outside


def test_path_input_is_disabled_without_allowed_roots(batch_setup, tmp_path, settings):
    settings.MODELYARD_BATCH_ALLOWED_ROOTS = []
    path = tmp_path / "in.csv"
    input_frame(10).to_csv(path, index=False)
    with pytest.raises(NotAllowed) as caught:
        _create(batch_setup, input_path=str(path))
    assert caught.value.code == "path_input_disabled"


def test_path_under_an_allowed_root_runs(batch_setup, roots):
    inside, _ = roots
    path = inside / "daily.parquet"
    input_frame(1_500).to_parquet(path, index=False)
    job = run_job_inline(_create(batch_setup, input_path=str(path), id_column="row_id"))
    assert (job.state, job.input_source, job.output_rows) == ("succeeded", "path", 1_500)


@pytest.mark.parametrize("how", ["outside", "dotdot", "symlink", "symlinked_dir", "relative"])
def test_paths_leading_outside_the_roots_are_refused(batch_setup, roots, how):
    inside, outside = roots
    secret = outside / "secret.csv"
    input_frame(10).to_csv(secret, index=False)
    if how == "outside":
        raw = str(secret)
    elif how == "dotdot":
        raw = f"{inside}/../elsewhere/secret.csv"
    elif how == "symlink":
        os.symlink(secret, inside / "link.csv")
        raw = str(inside / "link.csv")
    elif how == "symlinked_dir":
        os.symlink(outside, inside / "sub")
        raw = str(inside / "sub" / "secret.csv")
    else:
        raw = "elsewhere/secret.csv"
    with pytest.raises((NotAllowed, InvalidInput)) as caught:
        _create(batch_setup, input_path=raw)
    assert caught.value.code in ("path_not_allowed", "invalid_path")
    assert not BatchJob.objects.exists()


def test_symlink_swapped_in_after_submission_is_refused_when_the_job_starts(batch_setup, roots):
    inside, outside = roots
    path = inside / "daily.csv"
    input_frame(100).to_csv(path, index=False)
    job = _create(batch_setup, input_path=str(path))
    secret = outside / "secret.csv"
    input_frame(100, seed=3).to_csv(secret, index=False)
    path.unlink()
    os.symlink(secret, path)
    job = run_job_inline(job)
    assert job.state == "failed" and "outside the allowed" in job.error


def test_corrupt_parquet_is_a_clear_error(batch_setup):
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        _create(batch_setup, upload=SimpleUploadedFile("x.parquet", b"PAR1" + b"\x00" * 64))
