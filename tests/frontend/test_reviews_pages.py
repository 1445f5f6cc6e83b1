from __future__ import annotations

import pytest

from core.models import AuditEvent
from registry import services
from registry.choices import VersionState
from registry.models import Review
from registry.services.versions import VersionMetadata
from tests.factories import RegisteredModelFactory
from tests.frontend.conftest import assert_csp_clean
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", ["viewer", "data_scientist", "operator"])
def test_review_pages_are_for_reviewers_only(make_user, login, role, in_review):
    client = login(make_user(role))
    refused = client.get("/reviews/")
    assert refused.status_code == 403
    assert "needs the &#x27;review&#x27; capability" in refused.content.decode()
    assert client.get("/reviews/churn/1/").status_code == 403
    response = client.post("/reviews/churn/1/", {"decision": "approve"})
    assert response.status_code == 403
    in_review.refresh_from_db()
    assert in_review.state == VersionState.IN_REVIEW


def test_empty_queue_explains_what_appears_here(login, reviewer):
    html = login(reviewer).get("/reviews/").content.decode()
    assert "Nothing to review" in html


def test_queue_lists_versions_and_nav_shows_a_count(login, reviewer, in_review):
    html = login(reviewer).get("/reviews/").content.decode()
    assert "churn v1" in html
    assert '<span class="count-badge">1</span><span class="visually-hidden"> waiting</span>' in html
    assert "/reviews/churn/1/" in html
    assert_csp_clean(html)


def test_review_page_shows_evidence_against_the_live_version(
    login, scientist, reviewer, make_user, registered_model, sklearn_model
):
    live = upload_version(
        registered_model,
        scientist,
        sklearn_model,
        submit=True,
        metadata=VersionMetadata(params={"C": 1.0, "penalty": "l2"}, metrics={"auc": 0.80}),
    )
    services.version_review(version=live, reviewer=make_user("reviewer"), decision="approve")
    services.alias_set(
        model=registered_model, name="production", version_number=1, actor=make_user("operator")
    )
    upload_version(
        registered_model,
        scientist,
        sklearn_model,
        submit=True,
        metadata=VersionMetadata(
            params={"C": 0.5, "max_iter": 300}, metrics={"auc": 0.85, "f1": 0.7}
        ),
    )
    response = login(reviewer).get("/reviews/churn/2/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Live now:" in html and "alias production" in html
    metrics = {row["name"]: row for row in response.context["metrics"]}
    assert metrics["auc"]["live"] == 0.80 and metrics["auc"]["candidate"] == 0.85
    assert metrics["auc"]["delta"] == pytest.approx(0.05)
    assert metrics["f1"]["live"] is None
    changes = {row["name"]: row["change"] for row in response.context["params"]}
    assert changes == {"C": "changed", "max_iter": "added", "penalty": "removed"}
    for evidence in (
        "Validation passed",
        "Safety scan",
        "Model card",
        "Lineage",
        "Parameters diff",
    ):
        assert evidence in html, evidence
    assert response.context["can_decide"] is True
    assert "disabled" not in html.split('value="approve"')[1].split(">")[0]
    assert_csp_clean(html)


def test_reviewer_approves_with_a_comment(login, reviewer, in_review):
    response = login(reviewer).post(
        "/reviews/churn/1/", {"decision": "approve", "comment": "holdout looks fine"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/reviews/"
    in_review.refresh_from_db()
    assert in_review.state == VersionState.APPROVED
    review = Review.objects.get()
    assert (review.reviewer, review.comment) == (reviewer, "holdout looks fine")
    assert AuditEvent.objects.filter(
        action="version.reviewed", reason="holdout looks fine"
    ).exists()


def test_reviewer_rejects(login, reviewer, in_review):
    login(reviewer).post("/reviews/churn/1/", {"decision": "reject", "comment": "leaky feature"})
    in_review.refresh_from_db()
    assert in_review.state == VersionState.REJECTED


def test_own_version_is_visibly_not_approvable(login, admin_user, sklearn_model):
    # An admin can both upload and review: the page must still refuse self-review.
    model = RegisteredModelFactory(name="own", owner=admin_user)
    version = upload_version(model, admin_user, sklearn_model, submit=True)
    client = login(admin_user)
    html = client.get("/reviews/own/1/").content.decode()
    assert "You uploaded this, someone else must review it." in html
    approve = html.split('value="approve"')[1].split(">")[0]
    reject = html.split('value="reject"')[1].split(">")[0]
    assert "disabled" in approve and "disabled" in reject
    # Forcing the POST anyway: the service refuses, nothing is recorded.
    response = client.post("/reviews/own/1/", {"decision": "approve"})
    assert response.status_code == 400
    assert "cannot review it" in response.content.decode()
    version.refresh_from_db()
    assert version.state == VersionState.IN_REVIEW
    assert not Review.objects.exists()


def test_bad_decision_value_is_a_form_error(login, reviewer, in_review):
    response = login(reviewer).post("/reviews/churn/1/", {"decision": "maybe"})
    assert response.status_code == 400
    in_review.refresh_from_db()
    assert in_review.state == VersionState.IN_REVIEW


def test_queue_query_count_is_bounded(
    login, reviewer, scientist, sklearn_model, django_assert_max_num_queries
):
    for index in range(3):
        model = RegisteredModelFactory(name=f"q{index}", owner=scientist)
        upload_version(model, scientist, sklearn_model, submit=True)
    client = login(reviewer)
    with django_assert_max_num_queries(12):
        response = client.get("/reviews/")
    assert response.content.decode().count("/reviews/q") == 3
