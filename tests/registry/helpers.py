from __future__ import annotations

import json
import uuid

from django.core.files.uploadedfile import SimpleUploadedFile

from registry import services
from registry.choices import VersionState
from registry.services.versions import VersionMetadata


def upload_payload(
    artifact: bytes,
    *,
    filename: str = "model.joblib",
    framework: str = "sklearn",
    metadata: dict | str | None = None,
    reference: bytes | None = None,
    reference_name: str = "reference.csv",
) -> dict:
    payload = {
        "file": SimpleUploadedFile(filename, artifact),
        "framework": framework,
        "metadata": metadata if isinstance(metadata, str) else json.dumps(metadata or {}),
    }
    if reference is not None:
        payload["reference_data"] = SimpleUploadedFile(reference_name, reference)
    return payload


def upload_version(
    model,
    uploader,
    trained,
    *,
    validate: bool = True,
    submit: bool = False,
    metadata: VersionMetadata | None = None,
):
    version = services.version_upload(
        model=model,
        uploader=uploader,
        artifact=SimpleUploadedFile("m.joblib", trained.artifact),
        framework="sklearn",
        metadata=metadata or VersionMetadata(),
        reference=SimpleUploadedFile("ref.csv", trained.reference_csv),
    )
    if validate:
        version = services.version_validate(version_id=version.pk)
        assert version.state == VersionState.VALIDATED, version.validation_report
    if submit:
        version = services.version_submit_for_review(version=version, actor=uploader)
    return version


def raw_multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body with file names exactly as given (test clients strip paths)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, content) in files.items():
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(header.encode("utf-8", "surrogatepass") + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
