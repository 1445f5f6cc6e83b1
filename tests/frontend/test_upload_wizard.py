from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from core.models import AuditEvent
from registry.choices import VersionState
from registry.models import ModelVersion, RegisteredModel
from tests.frontend.conftest import assert_csp_clean

pytestmark = pytest.mark.django_db


def form_data(trained, **overrides):
    data = {
        "model_name": "churn-new",
        "file": SimpleUploadedFile("model.joblib", trained.artifact),
        "framework": "auto",
        "description": "first try",
        "params": "C = 1.0\nsolver = lbfgs\nbalanced = true",
        "metrics": "auc = 0.91\naccuracy = 0.88",
        "tags": "tabular, demo",
        "parents": "",
        "datasets": "s3://bucket/train.parquet\nvalidation s3://bucket/holdout.parquet",
        "code_repo": "https://git.example.com/churn",
        "code_commit": "a1b2c3d4",
        "training_run_id": "run-7",
        "reference_data": SimpleUploadedFile("reference.csv", trained.reference_csv),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def nothing_stored(storage_snapshot):
    # A refused upload's good files are kept for the next submit (frontend/upload_staging.py),
    # outside the registry's artifacts: nothing else may be stored.
    assert {p for p in storage_snapshot() if not str(p).startswith("upload-staging/")} == set()
    assert not ModelVersion.objects.exists()
    assert not RegisteredModel.objects.filter(name="churn-new").exists()
    assert not AuditEvent.objects.filter(action__in=["model.created", "version.uploaded"]).exists()


@pytest.mark.parametrize("role", ["viewer", "reviewer", "operator"])
def test_roles_without_upload_get_403(make_user, login, role):
    client = login(make_user(role))
    assert client.get("/upload/").status_code == 403
    assert client.post("/upload/", {}).status_code == 403


def test_wizard_renders_every_field_with_a_label(login, scientist):
    response = login(scientist).get("/upload/")
    html = response.content.decode()
    assert response.status_code == 200
    for field in response.context["form"]:
        assert f'for="{field.id_for_label}"' in html or field.field.widget.use_fieldset, field.name
    assert_csp_clean(html)


def test_upload_creates_model_and_version_with_detected_framework(
    login, scientist, sklearn_model, storage_snapshot
):
    client = login(scientist)
    response = client.post("/upload/", form_data(sklearn_model))
    assert response.status_code == 302, response.context["form"].errors
    assert response["Location"] == "/models/churn-new/versions/1/"
    version = ModelVersion.objects.select_related("model").get()
    assert version.model.owner == scientist
    assert version.framework == "sklearn"
    assert version.state == VersionState.UPLOADED
    assert version.params == {"C": 1.0, "solver": "lbfgs", "balanced": True}
    assert version.metrics == {"auc": 0.91, "accuracy": 0.88}
    assert version.tags == ["tabular", "demo"]
    assert version.reference_rows == 200
    assert {(d.role, d.uri) for d in version.datasets.all()} == {
        ("training", "s3://bucket/train.parquet"),
        ("validation", "s3://bucket/holdout.parquet"),
    }
    assert len(storage_snapshot()) == 2  # artifact + reference
    page = client.get(response["Location"]).content.decode()
    assert "Validation in progress" in page


def test_upload_of_a_second_version_to_an_existing_model(
    login, scientist, sklearn_model, registered_model
):
    client = login(scientist)
    data = form_data(sklearn_model, model_name="CHURN", params="", metrics="{}")
    response = client.post("/upload/", data)
    assert response.status_code == 302
    assert registered_model.versions.get().number == 1


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"metrics": "auc = high"}, "metrics", "must be a number"),
        ({"metrics": "auc 0.9"}, "metrics", "key = value"),
        ({"params": '{"C": 1.0,'}, "params", "Not valid JSON"),
        ({"params": "[1, 2]"}, "params", "key = value"),
        ({"code_commit": "not-a-sha"}, "code_commit", "does not match"),
        ({"parents": "churn"}, "parents", "model:version"),
        ({"parents": "ghost:3"}, "parents", "does not exist"),
        ({"framework": "xgboost"}, "framework", "looks like a sklearn model"),
        ({"file": SimpleUploadedFile("m.bin", b"\x00garbage" * 10)}, "framework", "Could not tell"),
        (
            {"file": SimpleUploadedFile("m.bin", b"\x00garbage" * 10), "framework": "sklearn"},
            "file",
            "not a pickle",
        ),
        ({"file": SimpleUploadedFile("m.joblib", b"")}, "file", "empty"),
        ({"reference_data": SimpleUploadedFile("r.csv", b"\x00\x01")}, "reference_data", ""),
        ({"model_name": "bad name!"}, "model_name", "letters, digits"),
        ({"label_column": "truth"}, "label_column", "'truth' is not a column"),
        ({"label_column": "truth", "reference_data": None}, "label_column", "upload reference"),
        ({"file": None}, "file", "required"),
    ],
)
def test_errors_are_shown_next_to_their_field_and_nothing_is_stored(
    login, scientist, sklearn_model, storage_snapshot, overrides, field, message
):
    response = login(scientist).post("/upload/", form_data(sklearn_model, **overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message.lower() in " ".join(errors[field]).lower()
    assert f'id="id_{field}_error"' in response.content.decode()
    nothing_stored(storage_snapshot)


def test_unsafe_pickle_is_refused_at_the_file_field(login, scientist, storage_snapshot):
    import pickle

    from tests.models import Malicious

    data = form_data(
        type("T", (), {"artifact": pickle.dumps(Malicious()), "reference_csv": b"a\n1\n"}),
        framework="sklearn",
    )
    response = login(scientist).post("/upload/", data)
    assert response.status_code == 400
    assert "safety scan" in response.context["form"].errors["file"][0]
    nothing_stored(storage_snapshot)


def test_oversized_files_are_refused_with_the_limit(
    login, scientist, sklearn_model, storage_snapshot, settings
):
    settings.MODELYARD_MAX_ARTIFACT_BYTES = 100
    client = login(scientist)
    response = client.post("/upload/", form_data(sklearn_model))
    assert response.status_code == 400
    assert "the limit is 100 bytes" in response.context["form"].errors["file"][0]
    nothing_stored(storage_snapshot)
    # A body far past every limit is refused before it is read.
    settings.MODELYARD_MAX_REFERENCE_BYTES = 100
    big = SimpleUploadedFile("m.joblib", b"\x80" * (1024 * 1024 + 4096))
    response = client.post("/upload/", form_data(sklearn_model, file=big))
    assert response.status_code == 413
    assert "model files are limited to 100 bytes" in response.content.decode()
    nothing_stored(storage_snapshot)


def test_admin_can_upload_and_register_a_model(make_user, login, sklearn_model):
    admin = make_user("admin", "ada")
    response = login(admin).post("/upload/", form_data(sklearn_model))
    assert response.status_code == 302
    assert RegisteredModel.objects.get(name="churn-new").owner == admin


def test_framework_guess_endpoint(login, scientist, sklearn_model):
    client = login(scientist)
    response = client.post(
        "/upload/guess-framework/",
        {"file": SimpleUploadedFile("m.joblib", sklearn_model.artifact)},
        headers={"HX-Request": "true"},
    )
    assert 'data-guessed="sklearn"' in response.content.decode()
    response = client.post(
        "/upload/guess-framework/", {"file": SimpleUploadedFile("m.bin", b"nothing known")}
    )
    assert "Could not tell" in response.content.decode()


def test_every_problem_is_reported_at_once(login, scientist, sklearn_model, storage_snapshot):
    response = login(scientist).post(
        "/upload/",
        form_data(
            sklearn_model,
            framework="xgboost",
            metrics="auc = high",
            parents="churn:9",
            reference_data=SimpleUploadedFile("reference.csv", b""),
        ),
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    # The form's own check (metrics), the declared framework, the unknown parent and the
    # empty reference: one submit, every message beside its field.
    assert {"metrics", "parents", "reference_data"} <= set(errors), errors
    assert "framework" in errors or "file" in errors, errors
    assert "churn v9 does not exist" in " ".join(errors["parents"])
    nothing_stored(storage_snapshot)


def test_chosen_files_are_kept_after_an_error_and_used_on_resubmit(
    login, scientist, sklearn_model, storage_snapshot
):
    client = login(scientist)
    refused = client.post("/upload/", form_data(sklearn_model, parents="churn:9"))
    assert refused.status_code == 400
    html = refused.content.decode()
    assert "Kept from your last try: <strong>model.joblib</strong>" in html
    assert "Kept from your last try: <strong>reference.csv</strong>" in html
    assert "Choose the model file" not in html
    tokens = dict(
        (field, html.split(f'name="kept_{field}" value="', 1)[1].split('"', 1)[0])
        for field in ("file", "reference_data")
    )
    nothing_stored(storage_snapshot)
    # Resubmitted without choosing any file: the kept ones are used.
    data = form_data(sklearn_model, parents="", file=None, reference_data=None)
    data.update({f"kept_{field}": token for field, token in tokens.items()})
    accepted = client.post("/upload/", data)
    assert accepted.status_code == 302, accepted.context["form"].errors
    version = ModelVersion.objects.get(model__name="churn-new")
    assert version.original_filename == "model.joblib" and version.reference_rows == 200
    # Used and gone: nothing is left in the staging place.
    assert not [p for p in storage_snapshot() if str(p).startswith("upload-staging/")]


def test_kept_files_are_only_their_owners(login, scientist, make_user, sklearn_model):
    from accounts.choices import Role

    client = login(scientist)
    html = client.post("/upload/", form_data(sklearn_model, parents="churn:9")).content.decode()
    token = html.split('name="kept_file" value="', 1)[1].split('"', 1)[0]
    other = login(make_user(Role.DATA_SCIENTIST, "mallory"))
    data = form_data(sklearn_model, file=None, parents="")
    data["kept_file"] = token
    response = other.post("/upload/", data)
    assert response.status_code == 400
    assert "file" in response.context["form"].errors
    assert not ModelVersion.objects.exists()


def test_the_reference_label_column_is_recorded_and_kept_out_of_the_features(
    login, scientist, sklearn_model
):
    import io

    import pandas as pd

    reference = pd.read_csv(io.BytesIO(sklearn_model.reference_csv))
    reference["truth"] = [i % 2 for i in range(len(reference))]
    csv = reference.to_csv(index=False).encode()
    response = login(scientist).post(
        "/upload/",
        form_data(
            sklearn_model,
            reference_data=SimpleUploadedFile("reference.csv", csv),
            label_column=" truth ",
        ),
    )
    assert response.status_code == 302, response.context["form"].errors
    version = ModelVersion.objects.get(model__name="churn-new")
    assert version.reference_label_column == "truth"
    names = [column["name"] for column in version.reference_schema]
    assert names and "truth" not in names
