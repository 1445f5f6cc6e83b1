"""How batch files are encoded: working files as Arrow IPC (a copy to write, a memory map to
read), the output compact Parquet."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from django.core.files.storage import default_storage

from batch import services
from batch.models import BatchChunk
from batch.services import files
from tests.batch.conftest import input_frame


def _encodings(path, column: str) -> set[str]:
    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.names.index(column)
    return {
        encoding
        for group in range(metadata.num_row_groups)
        for encoding in metadata.row_group(group).column(index).encodings
    }


def _ipc(path):
    with pa.memory_map(path) as mapped:
        return pa.ipc.open_file(mapped).read_all()


def test_working_files_are_arrow_ipc_and_the_output_keeps_dictionaries_for_labels(batch_setup):
    job = services.batch_job_create(
        model=batch_setup["model"],
        actor=batch_setup["owner"],
        version_number=1,
        upload=_parquet_upload(input_frame(2_500)),
        id_column="row_id",
        chunk_rows=1_000,
    )
    services.batch_job_prepare(job_id=job.pk)
    staged = [default_storage.path(files.staged_name(job.pk, i)) for i in range(3)]
    rows = []
    for path in staged:
        with pa.memory_map(path) as mapped:
            reader = pa.ipc.open_file(mapped)
            # One file of one record batch per chunk; plain buffers, no compression.
            assert reader.num_record_batches == 1
            assert reader.schema.names == ["age", "income", "visits", "score", "row_id"]
            assert reader.schema.field("row_id").type == pa.int64()
            rows.append(reader.get_batch(0).num_rows)
    assert rows == [1_000, 1_000, 500]  # the last one short
    raw = open(staged[0], "rb").read()  # noqa: SIM115 - a test reading a small file whole
    assert input_frame(2_500)["income"].to_numpy().tobytes()[:8_000] in raw

    chunk_ids = BatchChunk.objects.filter(job=job).order_by("index").values_list("pk", flat=True)
    for chunk_id in chunk_ids:
        services.batch_chunk_run(chunk_id=chunk_id)
    chunk = _ipc(default_storage.path(files.chunk_name(job.pk, 2)))
    assert chunk.column_names == ["row_id", "prediction"]
    assert chunk.column("row_id").to_pylist() == list(range(2_000, 2_500))

    job = services.batch_job_join(job_id=job.pk)
    assert job.state == "succeeded", job.error
    output = default_storage.path(job.output_path)
    assert "RLE_DICTIONARY" in _encodings(output, "prediction")  # two classes
    assert "RLE_DICTIONARY" not in _encodings(output, "row_id")  # every value distinct
    assert pq.ParquetFile(output).metadata.row_group(0).column(0).compression == "SNAPPY"
    assert pq.read_table(output).column("row_id").to_pylist() == list(range(2_500))


def _parquet_upload(frame):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.batch.conftest import parquet_bytes

    return SimpleUploadedFile("input.parquet", parquet_bytes(frame))


def test_a_large_upload_is_moved_into_storage_not_copied(batch_setup):
    from django.core.files.uploadedfile import TemporaryUploadedFile

    from tests.batch.conftest import parquet_bytes

    content = parquet_bytes(input_frame(500))
    upload = TemporaryUploadedFile("input.parquet", "application/octet-stream", len(content), None)
    upload.write(content)
    upload.flush()
    temporary = upload.temporary_file_path()
    inode, device = os.stat(temporary).st_ino, os.stat(temporary).st_dev
    job = services.batch_job_create(
        model=batch_setup["model"],
        actor=batch_setup["owner"],
        version_number=1,
        upload=upload,
        id_column="row_id",
    )
    stored = default_storage.path(job.input_path)
    assert not os.path.exists(temporary)  # moved...
    if os.stat(stored).st_dev == device:  # ...by a rename where one file system allows it
        assert os.stat(stored).st_ino == inode
    with open(stored, "rb") as handle:
        assert handle.read() == content
    upload.close()  # Django's clean-up of a moved temporary file is harmless


def test_staged_rows_are_the_platforms_alone_until_a_chunk_is_granted():
    """A batch child runs model code as the model user: staged rows are written readable by
    the platform's user only; the read grant opens the one chunk file the child predicts to
    the model user's group, and revoking it closes the file again."""
    from core.model_process import Confinement, grant_read, model_user

    files.staged_write(9_999, 0, pa.record_batch({"a": [1.0, 2.0]}))
    try:
        path = Path(default_storage.path(files.staged_name(9_999, 0)))
        assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
        user = model_user()
        if os.geteuid() != 0 or user is None:
            return  # no model user to grant to: the mode above is the whole rule here
        grant = grant_read(path, Confinement(user=user, own_network=False))
        granted = path.stat()
        assert granted.st_gid == user.gid and granted.st_mode & 0o077 == 0o040
        grant.revoke()
        assert path.stat().st_mode & 0o077 == 0
    finally:
        files.job_files_delete(9_999)
