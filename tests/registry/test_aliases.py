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


def test_protected_alias_only_points_at_approved_version(versions, operator, api_for):
    api = api_for(operator)
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


def test_alias_once_protected_stays_protected(versions, operator, api_for):
    api = api_for(operator)
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


def test_data_scientists_cannot_move_a_protected_alias(versions, scientist, make_user, api_for):
    operator = make_user("operator")
    services.alias_set(model=versions[0].model, name="champion", version_number=1, actor=operator)
    services.alias_set(
        model=versions[0].model, name="stable", version_number=1, actor=operator, protected=True
    )
    events = AuditEvent.objects.filter(action__startswith="alias.").count()
    for name in ("champion", "stable", "Production"):
        for api in (api_for(scientist), api_for(make_user("data_scientist"))):
            moved = api.put(f"/api/v1/models/churn/aliases/{name}/", {"version": 1}, format="json")
            assert moved.status_code == 403, (name, moved.content)
            error = moved.json()["error"]
            assert error["code"] == "alias_protected_forbidden"
            assert "operator or reviewer" in error["message"] and error["details"] == {
                "alias": name
            }
    # Nor can they make an alias protected, or delete one.
    made = api_for(scientist).put(
        "/api/v1/models/churn/aliases/mine/", {"version": 1, "protected": True}, format="json"
    )
    assert made.status_code == 403
    assert api_for(scientist).delete("/api/v1/models/churn/aliases/champion/").status_code == 403
    assert AuditEvent.objects.filter(action__startswith="alias.").count() == events
    assert set(Alias.objects.values_list("name", flat=True)) == {"champion", "stable"}


def test_operators_and_reviewers_move_protected_aliases(versions, reviewer, operator, api_for):
    for user in (operator, reviewer):
        moved = api_for(user).put(
            "/api/v1/models/churn/aliases/champion/",
            {"version": 1, "reason": f"by {user.role}"},
            format="json",
        )
        assert moved.status_code == 200, moved.content
        event = AuditEvent.objects.filter(action="alias.set").order_by("-id").first()
        assert event.actor_id == user.pk and event.reason == f"by {user.role}"
    assert api_for(reviewer).delete("/api/v1/models/churn/aliases/champion/").status_code == 204


def test_a_token_without_deploy_or_review_scope_cannot_move_a_protected_alias(
    versions, make_user, api_for
):
    admin = make_user("admin")
    api = api_for(admin, scopes=["view", "set_alias"])
    assert (
        api.put("/api/v1/models/churn/aliases/champion/", {"version": 1}, format="json").status_code
        == 403
    )
    assert (
        api.put(
            "/api/v1/models/churn/aliases/candidate/", {"version": 1}, format="json"
        ).status_code
        == 200
    )
