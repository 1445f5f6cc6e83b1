"""Uploads under infrastructure faults.

A storage write that fails (full or read-only volume) answers 503 and leaves nothing: the
artifact store is a real, tiny tmpfs mounted for the test, so ENOSPC part-way through a
write and EROFS are the kernel's, not raised by a stand-in. A broker outage after the
version committed keeps the version and its files (the validation sweep enqueues it).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.errors import ServiceUnavailable
from devstack.services import free_port
from registry.models import ModelVersion
from registry.services.artifacts import artifact_store
from tests.conftest import _celery_broker
from tests.registry.helpers import upload_payload

pytestmark = pytest.mark.django_db
URL = "/api/v1/models/churn/versions/"
VOLUME_BYTES = 64 * 1024


def _files_and_folders(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def volume(tmp_path, settings):
    """A 64 KiB tmpfs as the artifact store; ``fill(free)`` leaves about ``free`` bytes."""
    root = tmp_path / "artifacts"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_BYTES},mode=0755", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:  # pragma: no cover - machines without mount rights
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "file_permissions_mode": 0o640},
        },
    }

    class Volume:
        path = root

        @staticmethod
        def fill(free: int) -> None:
            # Outside any folder the uploads write to; the listing below ignores it.
            filler = root / ".filler"
            with filler.open("wb") as handle:
                handle.write(b"\0" * (VOLUME_BYTES - free))

        @staticmethod
        def read_only() -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)

        @staticmethod
        def contents() -> list[str]:
            return [p for p in _files_and_folders(root) if p != ".filler"]

    yield Volume
    subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_write_that_fills_the_volume_part_way_removes_the_partial_file(volume, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(200 * 1024))  # three times the volume
    with pytest.raises(ServiceUnavailable) as raised:
        artifact_store(local_path=source, folder="models/1", basename="model.joblib")
    assert raised.value.code == "storage_unavailable"
    assert "No space left" in raised.value.message
    # Not even the empty uuid folder is left behind (only the parent folders it shares).
    assert volume.contents() == ["models", "models/1"]


def test_upload_failing_on_its_second_file_answers_503_and_leaves_no_file_and_no_row(
    registered_model, scientist, api_for, sklearn_model, volume
):
    # Room for the 1.7 KB artifact (one page), not for the 12 KB reference: the reference
    # write fails part-way, after the artifact was stored.
    volume.fill(free=8 * 1024)
    response = api_for(scientist).post(
        URL,
        upload_payload(sklearn_model.artifact, reference=sklearn_model.reference_csv),
        format="multipart",
    )
    assert response.status_code == 503, response.content
    assert response["Retry-After"].isdigit() and int(response["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable" and "Nothing was stored" in error["message"]
    assert not ModelVersion.objects.exists()
    assert not [p for p in volume.contents() if Path(volume.path, p).is_file()]


def test_upload_to_a_read_only_store_answers_503_and_leaves_no_file_and_no_row(
    registered_model, scientist, api_for, sklearn_model, volume
):
    volume.read_only()
    response = api_for(scientist).post(
        URL, upload_payload(sklearn_model.artifact), format="multipart"
    )
    assert response.status_code == 503, response.content
    assert int(response["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "Read-only file system" in response.json()["error"]["message"]
    assert not ModelVersion.objects.exists()
    assert volume.contents() == []


@pytest.mark.django_db(transaction=True)
def test_upload_committed_while_the_broker_is_down_keeps_its_version_and_files(
    registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    # transaction=True: the upload's atomic block is the outermost one, so its on_commit
    # enqueue runs (and meets the dead broker) as it does in production.
    previous = _celery_broker(f"redis://127.0.0.1:{free_port()}/0")
    try:
        response = api_for(scientist).post(
            URL, upload_payload(sklearn_model.artifact), format="multipart"
        )
    finally:
        _celery_broker(previous)
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get()
    assert version.state == "uploaded"  # the validation sweep will enqueue it
    assert storage_snapshot() == {version.artifact_path}
