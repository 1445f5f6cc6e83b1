"""Batch files in artifact storage: staged input, output chunks, the joined output.

Chunk files are written under a temporary name and renamed into place, so a reader sees a
chunk completely or not at all, and a chunk computed twice (a redelivered task after a
lost lease) replaces the identical file instead of adding rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage


def job_dir(job_id: int) -> str:
    return f"batch/jobs/{job_id}"


def staged_name(job_id: int) -> str:
    return f"{job_dir(job_id)}/input.parquet"


def chunk_name(job_id: int, index: int) -> str:
    return f"{job_dir(job_id)}/chunks/chunk-{index:06d}.parquet"


def _local(name: str) -> Path | None:
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        return None


@contextlib.contextmanager
def storage_write_atomic(name: str) -> Iterator[Path]:
    """Yield a local temp path; once the block succeeds its file replaces ``name``."""
    local = _local(name)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        try:
            yield tmp
            os.replace(tmp, local)  # atomic on one filesystem
        finally:
            tmp.unlink(missing_ok=True)
        return
    # Object stores: one PUT is atomic; the same name written twice holds one copy.
    with tempfile.TemporaryDirectory(prefix="modelyard-batch-") as tmpdir:
        tmp = Path(tmpdir) / Path(name).name
        yield tmp
        default_storage.delete(name)
        with tmp.open("rb") as handle:
            default_storage.save(name, File(handle, name=Path(name).name))


def storage_exists(name: str) -> bool:
    return default_storage.exists(name)


def job_files_delete(job_id: int) -> None:
    """Remove a job's working files (staged input and chunks), best effort."""
    local = _local(job_dir(job_id))
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    with contextlib.suppress(Exception):
        _dirs, names = default_storage.listdir(f"{job_dir(job_id)}/chunks")
        for name in names:
            default_storage.delete(f"{job_dir(job_id)}/chunks/{name}")
        default_storage.delete(staged_name(job_id))
