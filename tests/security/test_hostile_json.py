"""Hostile JSON at the platform API: nesting 1,000+ deep and NUL characters anywhere are a 400
with the error body naming the field, never a RecursionError or a PostgreSQL 500, and leave
nothing written."""

from __future__ import annotations

import json

import pytest

from core.models import AuditEvent
from deployments.models import Deployment
from registry.models import ModelVersion, RegisteredModel
from tests.registry.helpers import raw_multipart

pytestmark = pytest.mark.django_db


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code, error
    return error


@pytest.mark.parametrize("depth", [40, 1_000, 5_000, 50_000])
def test_deeply_nested_json_is_a_400(depth, scientist, api_for):
    body = '{"name": "deep", "tags": ' + "[" * depth + "]" * depth + "}"
    response = api_for(scientist).generic(
        "POST", "/api/v1/models/", body, content_type="application/json"
    )
    error = _error(response, 400, "json_too_deep")
    assert "deeper than 32" in error["message"]
    assert not RegisteredModel.objects.exists()


@pytest.mark.parametrize(
    ("guard_policy", "field"),
    [
        ({"max_error_rate": "0.1\u0000"}, "guard_policy.max_error_rate"),
        ({"max\u0000rate": 0.1}, 'guard_policy."max\\u0000rate"'),
        ({"drift": ["warn", {"x": "\u0000"}]}, "guard_policy.drift[1].x"),
    ],
    ids=["value", "key", "nested"],
)
def test_nul_in_a_guard_policy_is_a_400_naming_the_field(
    guard_policy, field, registered_model, operator, api_for
):
    api = api_for(operator)
    events = AuditEvent.objects.count()
    response = api.post(
        "/api/v1/deployments/",
        {"name": "churn-prod", "model": "churn", "guard_policy": guard_policy},
        format="json",
    )
    error = _error(response, 400, "nul_character")
    assert error["details"] == {"field": field} and error["message"].startswith(field)
    assert not Deployment.objects.exists() and AuditEvent.objects.count() == events


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"params": {"C": "1\u0000"}}, "metadata.params.C"),
        ({"params": {"C\u0000": 1}}, 'metadata.params."C\\u0000"'),
        ({"metrics": {"auc\u0000": 0.9}}, 'metadata.metrics."auc\\u0000"'),
        ({"datasets": [{"uri": "s3://x", "name": "a\u0000"}]}, "metadata.datasets[0].name"),
    ],
    ids=["param value", "param key", "metric key", "dataset name"],
)
def test_nul_in_upload_metadata_is_a_400_naming_the_field(
    metadata, field, registered_model, scientist, api_for, sklearn_model, storage_snapshot
):
    body, content_type = raw_multipart(
        {"framework": "sklearn", "metadata": json.dumps(metadata)},
        {"file": ("model.joblib", sklearn_model.artifact)},
    )
    response = api_for(scientist).generic(
        "POST", "/api/v1/models/churn/versions/", body, content_type=content_type
    )
    error = _error(response, 400, "nul_character")
    assert error["details"] == {"field": field}
    assert not ModelVersion.objects.exists() and storage_snapshot() == set()


def test_deep_upload_metadata_is_a_400(registered_model, scientist, api_for, sklearn_model):
    deep = '{"params": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
    body, content_type = raw_multipart(
        {"framework": "sklearn", "metadata": deep},
        {"file": ("model.joblib", sklearn_model.artifact)},
    )
    response = api_for(scientist).generic(
        "POST", "/api/v1/models/churn/versions/", body, content_type=content_type
    )
    assert _error(response, 400, "json_too_deep")["details"]["field"] == "metadata"
    assert not ModelVersion.objects.exists()


def test_nul_in_a_form_field_or_model_card_is_a_400(
    registered_model, scientist, api_for, sklearn_model
):
    body, content_type = raw_multipart(
        {"framework": "skl\u0000earn"}, {"file": ("model.joblib", sklearn_model.artifact)}
    )
    response = api_for(scientist).generic(
        "POST", "/api/v1/models/churn/versions/", body, content_type=content_type
    )
    assert _error(response, 400, "nul_character")["details"] == {"field": "framework"}
    card = api_for(scientist).patch(
        "/api/v1/models/churn/", {"tags": ["ok", "b\u0000d"]}, format="json"
    )
    assert _error(card, 400, "nul_character")["details"] == {"field": "tags[1]"}
    registered_model.refresh_from_db()
    assert registered_model.tags == []


def test_nul_in_a_query_parameter_is_a_400_not_a_500(registered_model, scientist, api_for):
    response = api_for(scientist).get("/api/v1/models/", {"search": "ch\u0000urn"})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] in ("nul_character", "invalid")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ('{"C\\u0000": 1}', "NUL character"),
        ('{"C": "a\\u0000"}', "NUL character"),
        ('C = "x\\u0000"', "NUL character"),
        ('{"C": ' + "[" * 5000 + "]" * 5000 + "}", "too deep"),
    ],
    ids=["key", "value", "key-value line", "deep"],
)
def test_the_upload_page_refuses_nul_and_deep_json_at_the_field(
    params, message, scientist, client, sklearn_model, storage_snapshot
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(scientist)
    response = client.post(
        "/upload/",
        {
            "model_name": "churn-new",
            "file": SimpleUploadedFile("model.joblib", sklearn_model.artifact),
            "framework": "sklearn",
            "params": params,
        },
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert message.lower() in " ".join(errors["params"]).lower(), errors
    # No version and no artifact: the only file is the chosen model kept for the retry
    # (the upload page keeps files that had no error of their own, frontend/upload_staging).
    assert not ModelVersion.objects.exists()
    assert storage_snapshot() == {f"upload-staging/{scientist.pk}/file"}
