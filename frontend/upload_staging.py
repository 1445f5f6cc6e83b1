"""Keep the files of an upload that was refused, so the person does not choose them again.

Browsers never re-fill a file input, so a form that comes back with errors would drop the
chosen model file and reference data each time. A refused upload's files that had no error
of their own are kept in artifact storage (shared by every web replica) under one place per
user and field, so at most one file per user and field is ever kept and an abandoned one is
replaced by the next; the page carries a signed token naming it, its size and its sha256.
The next submit without a newly chosen file uses the kept one; a successful upload removes it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core import signing
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile

_SALT = "frontend.upload-staging"
# A kept file is offered for a day: a form left open longer is chosen again.
MAX_AGE_SECONDS = 86400
FIELDS = ("file", "reference_data")


def _path(user_id: int, field: str) -> str:
    return f"upload-staging/{user_id}/{field}"


def stage(upload: UploadedFile, *, user_id: int, field: str) -> dict[str, Any]:
    """Keep ``upload`` for the user's next submit; what the page shows and carries."""
    path = _path(user_id, field)
    digest = hashlib.sha256()
    upload.seek(0)
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    if default_storage.exists(path):
        default_storage.delete(path)
    saved = default_storage.save(path, upload)
    kept = {"p": saved, "u": user_id, "n": upload.name, "s": upload.size, "h": digest.hexdigest()}
    return {"token": signing.dumps(kept, salt=_SALT), "name": upload.name, "size": upload.size}


def restore(token: str, *, user_id: int) -> UploadedFile | None:
    """The kept file the token names, or None (expired, another user's, or replaced since)."""
    try:
        kept = signing.loads(token, salt=_SALT, max_age=MAX_AGE_SECONDS)
    except signing.BadSignature:
        return None
    if kept.get("u") != user_id or not default_storage.exists(kept["p"]):
        return None
    # A temporary file, as Django gives a large upload: model files do not fit in memory.
    restored = TemporaryUploadedFile(kept["n"], "application/octet-stream", kept["s"], None)
    digest = hashlib.sha256()
    with default_storage.open(kept["p"], "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
            restored.write(chunk)
    restored.seek(0)
    # Another tab may have kept a newer file in the same place: never hand over that one.
    if digest.hexdigest() != kept["h"]:
        restored.close()
        return None
    return restored


def discard(*, user_id: int) -> None:
    for field in FIELDS:
        path = _path(user_id, field)
        if default_storage.exists(path):
            default_storage.delete(path)
