from __future__ import annotations

import io
import json
import pickle

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from core.models import AuditEvent
from registry.models import ModelVersion
from tests.models import Malicious, train_sklearn_joblib
from tests.registry.helpers import raw_multipart, upload_payload

pytestmark = pytest.mark.django_db
URL = "/api/v1/models/churn/versions/"

LINEAGE = {
    "description": "baseline",
    "params": {"C": 1.0},
    "metrics": {"auc": 0.91},
    "tags": ["baseline"],
    "datasets": [
        {
            "uri": "s3://bucket/train.parquet",
            "content_hash": "sha256:abc",
            "role": "training",
            "name": "train",
        }
    ],
    "code_repo": "https://git.example.com/ds/churn",
    "code_commit": "0123456789abcdef",
    "training_run_id": "run-42",
}


def test_upload_stores_artifact_under_server_name_with_hash_and_lineage(
    registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    api = api_for(scientist)
    response = api.post(
        URL,
        upload_payload(
            sklearn_model.artifact,
            filename="my model.joblib",
            metadata=LINEAGE,
            reference=sklearn_model.reference_csv,
        ),
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["number"] == 1 and body["state"] == "uploaded"
    assert body["artifact_format"] == "joblib" and body["safe_format"] is False
    assert body["original_filename"] == "my model.joblib"
    assert body["datasets"][0]["uri"] == "s3://bucket/train.parquet"
    assert body["code_commit"] == "0123456789abcdef" and body["training_run_id"] == "run-42"
    assert body["reference_rows"] == 200
    assert [c["name"] for c in body["reference_schema"]] == ["age", "income", "visits", "score"]
    import hashlib

    assert body["artifact_sha256"] == hashlib.sha256(sklearn_model.artifact).hexdigest()
    written = storage_snapshot()
    assert len(written) == 2 and all("my model" not in path for path in written)
    version = ModelVersion.objects.get()
    assert version.artifact_path.startswith(f"models/{registered_model.pk}/")
    assert AuditEvent.objects.filter(action="version.uploaded", object_id=str(version.pk)).exists()


def test_version_numbers_increase_per_model(registered_model, scientist, api_for):
    api = api_for(scientist)
    # Different bytes each time: the same bytes again are the same version (the next test).
    numbers = [
        api.post(
            URL, upload_payload(train_sklearn_joblib(seed=seed).artifact), format="multipart"
        ).json()["number"]
        for seed in range(3)
    ]
    assert numbers == [1, 2, 3]


def test_pushing_the_same_bytes_again_returns_the_existing_version(
    registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    api = api_for(scientist)
    first = api.post(URL, upload_payload(sklearn_model.artifact), format="multipart")
    files_after_first = storage_snapshot()
    again = api.post(
        URL, upload_payload(sklearn_model.artifact, metadata={"tags": ["x"]}), format="multipart"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["number"] == first.json()["number"] == 1
    assert again.json()["tags"] == []  # the existing version, unchanged
    assert ModelVersion.objects.count() == 1
    assert storage_snapshot() == files_after_first  # no second copy of the file
    assert AuditEvent.objects.filter(action="version.uploaded").count() == 1


def _assert_refused(response, status, code_or_text, storage_snapshot):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert code_or_text in (error["code"] + " " + error["message"])
    assert storage_snapshot() == set()
    assert ModelVersion.objects.count() == 0


def test_malicious_pickle_is_refused_with_findings(
    registered_model, scientist, api_for, storage_snapshot
):
    payload = pickle.dumps(Malicious())
    response = api_for(scientist).post(
        URL, upload_payload(payload, filename="model.pkl"), format="multipart"
    )
    _assert_refused(response, 422, "unsafe_artifact", storage_snapshot)
    assert "system" in response.json()["error"]["message"]
    assert response.json()["error"]["details"]["findings"]


def test_malicious_object_inside_joblib_is_refused(
    registered_model, scientist, api_for, storage_snapshot
):
    import joblib

    buffer = io.BytesIO()
    joblib.dump({"model": Malicious()}, buffer)
    response = api_for(scientist).post(URL, upload_payload(buffer.getvalue()), format="multipart")
    _assert_refused(response, 422, "unsafe_artifact", storage_snapshot)


@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"hello, not a model\n", b'{"not": "xgboost"}']
)
def test_file_that_is_not_a_model_is_refused(
    content, registered_model, scientist, api_for, storage_snapshot
):
    response = api_for(scientist).post(URL, upload_payload(content), format="multipart")
    _assert_refused(response, 400, "invalid_artifact", storage_snapshot)


def test_declared_framework_must_match_file(
    registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    response = api_for(scientist).post(
        URL, upload_payload(sklearn_model.artifact, framework="onnx"), format="multipart"
    )
    _assert_refused(response, 400, "invalid_artifact", storage_snapshot)


def test_oversize_upload_is_refused_with_413(
    registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    with override_settings(MODELYARD_MAX_ARTIFACT_BYTES=1000):
        response = api_for(scientist).post(
            URL, upload_payload(sklearn_model.artifact), format="multipart"
        )
    _assert_refused(response, 413, "limit", storage_snapshot)


@pytest.mark.parametrize(
    "filename",
    [
        "../evil.joblib",
        "../../etc/passwd",
        "/etc/passwd",
        "C:\\models\\m.joblib",
        "..\\..\\m.joblib",
        "m\x00.joblib",
        "model\u202eblboj.pkl",
        "m\u200b.joblib",
        "\uff0e\uff0e\uff0fevil.joblib",
        "..",
        "sub/dir.joblib",
    ],
)
def test_hostile_filenames_are_refused(
    filename, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    body, content_type = raw_multipart(
        {"framework": "sklearn"}, {"file": (filename, sklearn_model.artifact)}
    )
    response = api_for(scientist).generic("POST", URL, body, content_type=content_type)
    _assert_refused(response, 400, "", storage_snapshot)
    assert "name" in response.json()["error"]["message"].lower()


def test_dataset_uri_pointing_at_local_file_is_recorded_not_read(
    registered_model, scientist, api_for, sklearn_model, monkeypatch
):
    opened = []
    real_open = open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    metadata = {
        "datasets": [
            {"uri": "file:///etc/passwd", "content_hash": "sha256:00"},
            {"uri": "/etc/shadow"},
        ]
    }
    response = api_for(scientist).post(
        URL, upload_payload(sklearn_model.artifact, metadata=metadata), format="multipart"
    )
    assert response.status_code == 201
    assert [d["uri"] for d in response.json()["datasets"]] == ["file:///etc/passwd", "/etc/shadow"]
    assert "root:" not in response.content.decode()
    assert not [path for path in opened if path in ("/etc/passwd", "/etc/shadow")]


def test_unknown_framework_is_refused(
    registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    response = api_for(scientist).post(
        URL, upload_payload(sklearn_model.artifact, framework="tensorflow"), format="multipart"
    )
    _assert_refused(response, 400, "Unknown framework", storage_snapshot)


@pytest.mark.parametrize(
    "metadata,text",
    [
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("{not json", "not valid JSON"),
        (json.dumps({"metrics": {"auc": "high"}}), "metrics"),
        (json.dumps({"parents": [{"model": "nope", "version": 1}]}), "does not exist"),
    ],
)
def test_bad_metadata_is_refused(
    metadata, text, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    response = api_for(scientist).post(
        URL, upload_payload(sklearn_model.artifact, metadata=metadata), format="multipart"
    )
    _assert_refused(response, 400, text, storage_snapshot)


@pytest.mark.parametrize("reference", [b"", b"a,b\n", b"\x00\x01\x02garbage"])
def test_bad_reference_data_is_refused(
    reference, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    response = api_for(scientist).post(
        URL, upload_payload(sklearn_model.artifact, reference=reference), format="multipart"
    )
    assert response.status_code == 400, response.json()
    assert "reference" in response.json()["error"]["message"].lower()
    assert storage_snapshot() == set()
    assert ModelVersion.objects.count() == 0


def test_database_failure_after_storing_leaves_no_file(
    registered_model, scientist, sklearn_model, storage_snapshot, monkeypatch
):
    from registry import services
    from registry.services import versions
    from registry.services.versions import VersionMetadata

    def fail(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(versions, "_version_create", fail)
    with pytest.raises(RuntimeError):
        services.version_upload(
            model=registered_model,
            uploader=scientist,
            artifact=SimpleUploadedFile("m.joblib", sklearn_model.artifact),
            framework="sklearn",
            metadata=VersionMetadata(),
        )
    assert storage_snapshot() == set()


def test_model_name_collision_after_case_folding(scientist, api_for):
    api = api_for(scientist)
    assert api.post("/api/v1/models/", {"name": "Churn"}, format="json").status_code == 201
    response = api.post("/api/v1/models/", {"name": "churn"}, format="json")
    assert response.status_code == 409
    assert "Churn" in response.json()["error"]["message"]
    assert api.get("/api/v1/models/CHURN/").json()["name"] == "Churn"


@pytest.mark.parametrize("name", ["../x", "a b", "", "-lead", "x" * 101, "ünïcode"])
def test_model_names_must_be_slug_safe(name, scientist, api_for):
    response = api_for(scientist).post("/api/v1/models/", {"name": name}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("name")


def test_viewer_cannot_upload(registered_model, make_user, api_for, sklearn_model):
    response = api_for(make_user("viewer")).post(
        URL, upload_payload(sklearn_model.artifact), format="multipart"
    )
    assert response.status_code == 403
