from __future__ import annotations

import threading

import pytest
from django.db import connection

from core.errors import InvalidState, NotAllowed
from core.models import AuditEvent
from registry import services
from registry.choices import VersionState
from registry.models import Review
from tests.factories import RegisteredModelFactory
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def in_review(registered_model, scientist, sklearn_model):
    return upload_version(registered_model, scientist, sklearn_model, submit=True)


def test_reviewer_cannot_approve_own_version(reviewer, sklearn_model, api_for):
    model = RegisteredModelFactory(name="own", owner=reviewer)
    version = upload_version(model, reviewer, sklearn_model, submit=True)
    response = api_for(reviewer).post(
        "/api/v1/models/own/versions/1/reviews/", {"decision": "approve"}, format="json"
    )
    assert response.status_code == 403
    assert "you uploaded this version" in response.json()["error"]["message"].lower()
    version.refresh_from_db()
    assert version.state == VersionState.IN_REVIEW


def test_data_scientist_cannot_review(in_review, make_user, api_for):
    other = make_user("data_scientist")
    response = api_for(other).post(
        "/api/v1/models/churn/versions/1/reviews/", {"decision": "approve"}, format="json"
    )
    assert response.status_code == 403
    with pytest.raises(NotAllowed):
        services.version_review(version=in_review, reviewer=other, decision="approve")


def test_approval_records_evidence_and_audits(in_review, reviewer, api_for):
    response = api_for(reviewer).post(
        "/api/v1/models/churn/versions/1/reviews/",
        {"decision": "approve", "comment": "ship it"},
        format="json",
    )
    assert response.status_code == 201
    in_review.refresh_from_db()
    assert in_review.state == VersionState.APPROVED
    review = Review.objects.get()
    assert review.evidence["artifact_sha256"] == in_review.artifact_sha256
    assert review.evidence["validation_report"]["load"]["ok"] is True
    assert AuditEvent.objects.filter(action="version.reviewed", reason="ship it").exists()


def test_reject_ends_the_review(in_review, reviewer, scientist):
    services.version_review(
        version=in_review, reviewer=reviewer, decision="reject", comment="leaks the label"
    )
    in_review.refresh_from_db()
    assert in_review.state == VersionState.REJECTED
    with pytest.raises(InvalidState):
        services.alias_set(
            model=in_review.model, name="candidate", version_number=1, actor=scientist
        )


def test_policy_needs_two_distinct_approvals(registered_model, scientist, sklearn_model, make_user):
    registered_model.approvals_required = 2
    registered_model.save()
    version = upload_version(registered_model, scientist, sklearn_model, submit=True)
    first, second = make_user("reviewer"), make_user("reviewer")
    services.version_review(version=version, reviewer=first, decision="approve")
    version.refresh_from_db()
    assert version.state == VersionState.IN_REVIEW
    with pytest.raises(Exception, match="already reviewed"):
        services.version_review(version=version, reviewer=first, decision="approve")
    services.version_review(version=version, reviewer=second, decision="approve")
    version.refresh_from_db()
    assert version.state == VersionState.APPROVED


def test_cannot_submit_unvalidated_or_review_unsubmitted(
    registered_model, scientist, sklearn_model, reviewer, api_for
):
    version = upload_version(registered_model, scientist, sklearn_model, validate=False)
    response = api_for(scientist).post("/api/v1/models/churn/versions/1/submit/")
    assert response.status_code == 409
    assert "only a validated version" in response.json()["error"]["message"]
    with pytest.raises(InvalidState):
        services.version_review(version=version, reviewer=reviewer, decision="approve")


@pytest.mark.django_db(transaction=True)
def test_concurrent_approvals_do_not_double_count(scientist, sklearn_model, make_user):
    model = RegisteredModelFactory(name="race", owner=scientist, approvals_required=3)
    version = upload_version(model, scientist, sklearn_model, submit=True)
    reviewers = [make_user("reviewer") for _ in range(3)]
    barrier = threading.Barrier(3)
    errors = []

    def approve(user):
        try:
            barrier.wait()
            services.version_review(version=version, reviewer=user, decision="approve")
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(u,)) for u in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    version.refresh_from_db()
    assert version.state == VersionState.APPROVED
    approved_events = AuditEvent.objects.filter(
        action="version.state_changed", object_id=str(version.pk), after__state="approved"
    )
    assert approved_events.count() == 1
