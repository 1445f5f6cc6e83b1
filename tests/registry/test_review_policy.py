"""The review policy is a reviewer's call, audited, and frozen onto a version at submit."""

from __future__ import annotations

import pytest

from core.errors import NotAllowed
from core.models import AuditEvent
from registry import services
from registry.choices import VersionState
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


def _policy(api, value):
    return api.patch("/api/v1/models/churn/", {"approvals_required": value}, format="json")


def test_uploader_and_other_scientists_cannot_change_the_policy(
    registered_model, scientist, make_user, sklearn_model, api_for
):
    upload_version(registered_model, scientist, sklearn_model, submit=True)
    registered_model.approvals_required = 2
    registered_model.save()
    for user in (scientist, make_user("data_scientist")):
        response = _policy(api_for(user), 1)
        assert response.status_code == 403, response.content
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert "review policy" in error["message"] and "approvals_required" in error["message"]
    assert _policy(api_for(make_user("operator")), 1).status_code == 403
    registered_model.refresh_from_db()
    assert registered_model.approvals_required == 2
    assert not AuditEvent.objects.filter(action="model.updated").exists()
    # The card is still the data scientist's to edit; resending the policy unchanged is fine.
    response = api_for(scientist).patch(
        "/api/v1/models/churn/", {"intended_use": "churn", "approvals_required": 2}, format="json"
    )
    assert response.status_code == 200 and response.json()["intended_use"] == "churn"


def test_reviewer_and_admin_change_the_policy_audited_with_before_and_after(
    registered_model, reviewer, make_user, api_for
):
    response = _policy(api_for(reviewer), 3)
    assert response.status_code == 200 and response.json()["approvals_required"] == 3
    event = AuditEvent.objects.get(action="model.updated")
    assert event.actor_id == reviewer.pk
    assert event.before == {"approvals_required": 1} and event.after == {"approvals_required": 3}
    assert _policy(api_for(make_user("admin")), 2).status_code == 200
    # A reviewer sets the policy but does not edit the card.
    card = api_for(reviewer).patch("/api/v1/models/churn/", {"team": "x"}, format="json")
    assert card.status_code == 403
    assert _policy(api_for(reviewer), 0).status_code == 400


def test_token_scopes_narrow_the_policy_right(registered_model, make_user, api_for):
    admin = make_user("admin")
    response = _policy(api_for(admin, scopes=["view", "manage_models"]), 5)
    assert response.status_code == 403
    registered_model.refresh_from_db()
    assert registered_model.approvals_required == 1


def test_lowering_the_policy_never_applies_to_a_version_in_review(
    registered_model, scientist, reviewer, make_user, sklearn_model, api_for
):
    registered_model.approvals_required = 2
    registered_model.save()
    in_review = upload_version(registered_model, scientist, sklearn_model, submit=True)
    assert in_review.approvals_required == 2
    submitted = AuditEvent.objects.get(action="version.state_changed", after__state="in_review")
    assert submitted.after["approvals_required"] == 2
    assert _policy(api_for(reviewer), 1).status_code == 200
    services.version_review(version=in_review, reviewer=reviewer, decision="approve")
    in_review.refresh_from_db()
    assert in_review.state == VersionState.IN_REVIEW  # still needs the second approval
    detail = api_for(scientist).get("/api/v1/models/churn/versions/1/").json()
    assert detail["approvals_required"] == 2
    # A version submitted after the change is reviewed under the new policy ...
    later = upload_version(registered_model, scientist, sklearn_model, submit=True)
    services.version_review(version=later, reviewer=reviewer, decision="approve")
    later.refresh_from_db()
    assert later.state == VersionState.APPROVED and later.approvals_required == 1
    # ... and the first needs its second distinct reviewer still.
    services.version_review(version=in_review, reviewer=make_user("reviewer"), decision="approve")
    in_review.refresh_from_db()
    assert in_review.state == VersionState.APPROVED


def test_raising_the_policy_does_not_move_the_goalposts_either(
    registered_model, scientist, reviewer, sklearn_model
):
    in_review = upload_version(registered_model, scientist, sklearn_model, submit=True)
    services.model_update(model=registered_model, actor=reviewer, approvals_required=4)
    services.version_review(version=in_review, reviewer=reviewer, decision="approve")
    in_review.refresh_from_db()
    assert in_review.state == VersionState.APPROVED


def test_service_refuses_a_scientist_too(registered_model, scientist):
    with pytest.raises(NotAllowed, match="review policy"):
        services.model_update(model=registered_model, actor=scientist, approvals_required=1 + 1)
