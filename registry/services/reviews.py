from __future__ import annotations

from django.db import IntegrityError, transaction

from accounts.models import User
from accounts.permissions import user_has_capability
from core.choices import AuditAction, Capability
from core.errors import Conflict, InvalidInput, InvalidState, NotAllowed
from core.services import audit_record
from registry.choices import ReviewDecision, VersionState
from registry.models import ModelVersion, Review
from registry.services.transitions import version_transition


def approvals_required_for(version: ModelVersion) -> int:
    """How many approvals ``version`` needs: the policy snapshot taken when it entered review.

    Versions that entered review before snapshots existed have none; for those the model's
    current policy is the only record there is.
    """
    if version.approvals_required is not None:
        return version.approvals_required
    return version.model.approvals_required


@transaction.atomic
def version_review(
    *, version: ModelVersion, reviewer: User, decision: str, comment: str = ""
) -> Review:
    """Record a review of an in-review version.

    Invariants: only reviewers (or admins) review; nobody reviews their own upload; one
    review per reviewer; a reject ends the review; the version is approved when the count of
    approvals in the policy it entered review under (its snapshot) is reached. The version
    row is locked, so two concurrent approvals cannot both count as "the last one needed".
    """
    if decision not in ReviewDecision.values:
        raise InvalidInput(f"decision must be 'approve' or 'reject', not {decision!r}.")
    if not user_has_capability(reviewer, Capability.REVIEW):
        raise NotAllowed(f"Only reviewers can review; your role is '{reviewer.role}'.")
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
    if version.created_by_id == reviewer.pk:
        raise NotAllowed(
            "You uploaded this version, so you cannot review it: "
            "another reviewer must approve or reject it.",
            code="self_review",
        )
    if version.state != VersionState.IN_REVIEW:
        raise InvalidState(
            f"{version} is {version.state}; only a version in review can be reviewed."
        )
    evidence = {
        "artifact_sha256": version.artifact_sha256,
        "artifact_format": version.artifact_format,
        "safe_format": version.safe_format,
        "validation_report": version.validation_report,
        "metrics": version.metrics,
    }
    try:
        with transaction.atomic():
            review = Review.objects.create(
                version=version,
                reviewer=reviewer,
                decision=decision,
                comment=comment,
                evidence=evidence,
            )
    except IntegrityError as exc:
        raise Conflict(f"You have already reviewed {version}.", code="already_reviewed") from exc
    audit_record(
        actor=reviewer,
        action=AuditAction.VERSION_REVIEWED,
        obj=version,
        reason=comment,
        after={
            "decision": decision,
            "review_id": review.pk,
            "artifact_sha256": version.artifact_sha256,
        },
    )
    if decision == ReviewDecision.REJECT:
        version_transition(
            version=version, to=VersionState.REJECTED, actor=reviewer, reason=comment
        )
    else:
        approvals = version.reviews.filter(decision=ReviewDecision.APPROVE).count()
        required = approvals_required_for(version)
        if approvals >= required:
            version_transition(
                version=version,
                to=VersionState.APPROVED,
                actor=reviewer,
                reason=comment,
                evidence={"approvals": approvals, "required": required},
            )
    return review
