"""The version state machine's one writer: every state change passes through here."""

from __future__ import annotations

from typing import Any

from core.choices import AuditAction
from core.errors import InvalidState
from core.state_machine import StateMachine
from registry.choices import VersionState
from registry.models import ModelVersion

S = VersionState
VERSION_STATES: StateMachine[ModelVersion] = StateMachine(
    ModelVersion,
    {
        S.UPLOADED: {S.VALIDATING, S.ARCHIVED},
        S.VALIDATING: {S.VALIDATED, S.INVALID, S.ARCHIVED},
        S.VALIDATED: {S.IN_REVIEW, S.ARCHIVED},
        S.INVALID: {S.ARCHIVED},
        S.IN_REVIEW: {S.APPROVED, S.REJECTED, S.ARCHIVED},
        S.APPROVED: {S.ARCHIVED},
        S.REJECTED: {S.ARCHIVED},
        S.ARCHIVED: set(),
    },
)


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
    fields = {name: getattr(version, name) for name in extra_fields}
    evidence = dict(evidence or {})
    if to == S.IN_REVIEW:
        # The review policy is frozen onto the version as it enters review: a later change
        # of the model's policy (lowering it, say) never applies to a version in review.
        fields["approvals_required"] = version.model.approvals_required
        evidence["approvals_required"] = version.model.approvals_required
    moved = VERSION_STATES.move(
        version,
        to,
        fields=fields,
        actor=actor,
        audit_action=AuditAction.VERSION_STATE_CHANGED,
        reason=reason,
        evidence=evidence,
    )
    if not moved:  # only when a caller forgot the lock: another writer moved it first
        version.refresh_from_db(fields=["state"])
        raise InvalidState(
            f"{version} changed to {version.state} meanwhile; it did not become {to}.",
            details={"state": str(version.state), "requested": str(to)},
        )
    return version
