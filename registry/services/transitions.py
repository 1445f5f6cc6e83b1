"""The version state machine's one writer: every state change passes through here."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from core.choices import AuditAction
from core.errors import InvalidState
from core.services import audit_record
from registry.choices import VersionState
from registry.models import ModelVersion

S = VersionState
ALLOWED: dict[str, set[str]] = {
    S.UPLOADED: {S.VALIDATING, S.ARCHIVED},
    S.VALIDATING: {S.VALIDATED, S.INVALID, S.ARCHIVED},
    S.VALIDATED: {S.IN_REVIEW, S.ARCHIVED},
    S.INVALID: {S.ARCHIVED},
    S.IN_REVIEW: {S.APPROVED, S.REJECTED, S.ARCHIVED},
    S.APPROVED: {S.ARCHIVED},
    S.REJECTED: {S.ARCHIVED},
    S.ARCHIVED: set(),
}


def version_transition(
    *,
    version: ModelVersion,
    to: str,
    actor: Any | None,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
    extra_fields: tuple[str, ...] = (),
) -> ModelVersion:
    """Move a locked version (select_for_update by the caller) to ``to``, with an audit record."""
    if to not in ALLOWED[version.state]:
        raise InvalidState(
            f"{version} is {version.state}; it cannot become {to}.",
            details={"state": version.state, "requested": str(to)},
        )
    before = version.state
    version.state = to
    version.state_changed_at = timezone.now()
    fields = ["state", "state_changed_at", *extra_fields]
    evidence = dict(evidence or {})
    if to == S.IN_REVIEW:
        # The review policy is frozen onto the version as it enters review: a later change
        # of the model's policy (lowering it, say) never applies to a version in review.
        version.approvals_required = version.model.approvals_required
        fields.append("approvals_required")
        evidence["approvals_required"] = version.approvals_required
    version.save(update_fields=fields)
    audit_record(
        actor=actor,
        action=AuditAction.VERSION_STATE_CHANGED,
        obj=version,
        object_repr=str(version),
        reason=reason,
        before={"state": before},
        after={"state": str(to), **evidence},
    )
    return version
