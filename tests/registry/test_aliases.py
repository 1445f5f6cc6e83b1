from __future__ import annotations

import pytest

from core.models import AuditEvent
from registry import services
from registry.models import Alias
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(registered_model, scientist, reviewer, sklearn_model):
    approved = upload_version(registered_model, scientist, sklearn_model, submit=True)
    services.version_review(version=approved, reviewer=reviewer, decision="approve")
    validated = upload_version(registered_model, scientist, sklearn_model)
    return approved, validated


def test_protected_alias_only_points_at_approved_version(versions, scientist, api_for):
    api = api_for(scientist)
    refused = api.put("/api/v1/models/churn/aliases/champion/", {"version": 2}, format="json")
    assert refused.status_code == 409
    assert "protected" in refused.json()["error"]["message"]
    moved = api.put("/api/v1/models/churn/aliases/champion/", {"version": 1}, format="json")
    assert moved.status_code == 200 and moved.json() == {
        **moved.json(),
        "name": "champion",
        "version": 1,
        "protected": True,
    }


def test_unprotected_alias_moves_freely_and_is_audited(versions, scientist, api_for):
    api = api_for(scientist)
    assert (
        api.put(
            "/api/v1/models/churn/aliases/candidate/", {"version": 2}, format="json"
        ).status_code
        == 200
    )
    assert (
        api.put(
            "/api/v1/models/churn/aliases/candidate/",
            {"version": 1, "reason": "back"},
            format="json",
        ).status_code
        == 200
    )
    event = AuditEvent.objects.filter(action="alias.set").first()
    assert event.before == {"version": 2, "protected": False} and event.reason == "back"
    assert api.get("/api/v1/models/churn/").json()["aliases"][0]["name"] == "candidate"
    assert api.delete("/api/v1/models/churn/aliases/candidate/").status_code == 204
    assert not Alias.objects.exists()
    assert api.delete("/api/v1/models/churn/aliases/candidate/").status_code == 404


def test_alias_once_protected_stays_protected(versions, scientist, api_for):
    api = api_for(scientist)
    api.put(
        "/api/v1/models/churn/aliases/stable/", {"version": 1, "protected": True}, format="json"
    )
    response = api.put("/api/v1/models/churn/aliases/stable/", {"version": 2}, format="json")
    assert response.status_code == 409


def test_reviewer_cannot_move_aliases(versions, reviewer, api_for):
    response = api_for(reviewer).put(
        "/api/v1/models/churn/aliases/x/", {"version": 1}, format="json"
    )
    assert response.status_code == 403


def test_archiving_an_aliased_version_is_refused(versions, scientist, api_for):
    api = api_for(scientist)
    api.put("/api/v1/models/churn/aliases/candidate/", {"version": 2}, format="json")
    response = api.post("/api/v1/models/churn/versions/2/archive/")
    assert response.status_code == 403 and "candidate" in response.json()["error"]["message"]
    api.delete("/api/v1/models/churn/aliases/candidate/")
    assert api.post("/api/v1/models/churn/versions/2/archive/").json()["state"] == "archived"
