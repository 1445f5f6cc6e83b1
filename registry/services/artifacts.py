"""Artifact files: server-chosen names in Django storage, client filenames only as labels."""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile

from core.infrastructure import STORAGE_ERRNOS, storage_unavailable


@dataclass(frozen=True)
class StoredFile:
    path: str
    sha256: str
    size: int


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def uploaded_file_on_disk(upload: UploadedFile[bytes]) -> Iterator[Path]:
    """A local path for an upload: Django's temp file when it has one, else a temp copy."""
    if hasattr(upload, "temporary_file_path"):
        yield Path(upload.temporary_file_path())
        return
    with tempfile.NamedTemporaryFile(prefix="modelyard-upload-") as handle:
        upload.seek(0)
        for chunk in upload.chunks():
            handle.write(chunk)
        handle.flush()
        yield Path(handle.name)


def artifact_store(*, local_path: Path, folder: str, basename: str) -> StoredFile:
    """Copy a local file into artifact storage under ``folder/<uuid>/basename``."""
    sha256 = file_sha256(local_path)
    wanted = f"{folder}/{uuid.uuid4().hex}/{basename}"
    try:
        with local_path.open("rb") as handle:
            stored = default_storage.save(wanted, File(handle, name=basename))
    except BaseException as exc:
        # Django's FileSystemStorage leaves the part it wrote when a write fails (a full or
        # read-only volume): remove it. The name is ours alone (a fresh uuid folder).
        artifact_delete_quietly([wanted])
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            raise storage_unavailable(exc, cleaned_up=True) from exc
        raise
    if stored != wanted:  # storage renamed it: never silently point at another file
        default_storage.delete(stored)
        raise RuntimeError(f"Artifact storage renamed {wanted!r} to {stored!r}.")
    return StoredFile(path=stored, sha256=sha256, size=local_path.stat().st_size)


def artifact_delete_quietly(paths: list[str]) -> None:
    """Best-effort cleanup of files written for a change that did not commit."""
    for path in paths:
        with contextlib.suppress(Exception):
            default_storage.delete(path)
        # The uuid folder it was written in, once empty (storages with real folders only).
        with contextlib.suppress(Exception):
            os.rmdir(default_storage.path(posixpath.dirname(path)))


@contextlib.contextmanager
def artifact_local_path(path: str) -> Iterator[Path]:
    """A local filesystem path for a stored artifact (a temp copy for remote storages)."""
    try:
        yield Path(default_storage.path(path))
        return
    except NotImplementedError:
        pass
    suffix = Path(path).suffix
    with tempfile.NamedTemporaryFile(prefix="modelyard-artifact-", suffix=suffix) as handle:
        with default_storage.open(path, "rb") as source:
            shutil.copyfileobj(source, handle, length=1024 * 1024)
        handle.flush()
        yield Path(handle.name)
