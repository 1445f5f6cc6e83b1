"""The upload takes declared feature names and class labels; the version API shows the
contract and says plainly when a model's labels are only 0..k-1."""

from __future__ import annotations

import pytest

from registry import services
from registry.models import ModelVersion
from tests.models import contract_cases
from tests.registry.helpers import upload_payload

pytestmark = pytest.mark.django_db
URL = "/api/v1/models/churn/versions/"


@pytest.fixture(scope="module")
def lightgbm_text():
    return contract_cases()["lightgbm_text_string_labels"]


def _upload_and_validate(api, case, metadata, artifact=None):
    response = api.post(
        URL,
        upload_payload(
            artifact or case.artifact, filename="m.txt", framework="lightgbm", metadata=metadata
        ),
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    return _validated(api, response.json()["number"])


def _validated(api, number):
    version = ModelVersion.objects.get(model__name="churn", number=number)
    services.version_validate(version_id=version.pk)
    return api.get(f"{URL}{number}/").json()


def test_labels_are_the_given_class_labels_or_plainly_0_to_k(
    registered_model, scientist, api_for, lightgbm_text
):
    api = api_for(scientist)
    named = _upload_and_validate(
        api, lightgbm_text, {"class_labels": ["churn", "stay"], "feature_names": None}
    )
    assert named["state"] == "validated", named["validation_report"]
    assert named["contract"]["output"]["classes"] == ["churn", "stay"]
    assert named["labels_note"] is None
    assert named["validation_report"]["load"]["predictions_preview"][0] in ("churn", "stay")

    # The same booster once more without labels: a trailing newline makes it another file
    # (pushing identical bytes again answers the existing version, see tests/clients).
    unnamed = _upload_and_validate(api, lightgbm_text, {}, artifact=lightgbm_text.artifact + b"\n")
    assert unnamed["contract"]["output"]["labels_source"] == "index"
    assert "labels are 0..1" in unnamed["labels_note"]


def test_declared_feature_names_key_the_rows_of_a_model_fitted_without_them(
    registered_model, scientist, api_for
):
    case = contract_cases()["xgboost_json_numpy"]
    api = api_for(scientist)
    response = api.post(
        URL,
        upload_payload(
            case.artifact,
            filename="m.json",
            framework="xgboost",
            metadata={"feature_names": ["a", "b", "c", "d"]},
        ),
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    version = _validated(api, response.json()["number"])
    assert [f["name"] for f in version["contract"]["features"]] == ["a", "b", "c", "d"]
    assert version["contract"]["names_source"] == "declared"


@pytest.mark.parametrize(
    "metadata",
    [{"class_labels": [True, False]}, {"class_labels": ["a", "a"]}, {"feature_names": ["x", "x"]}],
)
def test_bad_declared_labels_or_names_are_refused_at_upload(
    registered_model, scientist, api_for, lightgbm_text, metadata
):
    response = api_for(scientist).post(
        URL,
        upload_payload(
            lightgbm_text.artifact, filename="m.txt", framework="lightgbm", metadata=metadata
        ),
        format="multipart",
    )
    assert response.status_code == 400, response.json()
    assert set(response.json()) == {"error"}
