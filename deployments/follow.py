"""Deployments that follow an alias: moving a protected alias rolls the new version out.

Registry may not import deployments, so registry calls ``deployments_alias_moved`` through
the callback it is given in DeploymentsConfig.ready (registry.services.aliases).
"""

from __future__ import annotations

import logging

from django.db import transaction

from accounts.models import User
from core.choices import AuditAction
from core.errors import DomainError, InvalidInput, NotFound
from core.services import audit_record
from deployments.models import Deployment
from registry.models import Alias, name_validator
from registry.services.aliases import PROTECTED_ALIAS_NAMES

logger = logging.getLogger(__name__)


def alias_version_number(*, deployment: Deployment, alias: str) -> int:
    """The version number ``alias`` of the deployment's model points at now."""
    target = (
        Alias.objects.filter(model_id=deployment.model_id, name__iexact=alias)
        .values_list("version__number", flat=True)
        .first()
    )
    if target is None:
        raise NotFound(
            f"Model {deployment.model.name} has no alias {alias!r}.",
            code="unknown_alias",
            details={"alias": alias},
        )
    return target


@transaction.atomic
def deployment_follow_set(
    *, deployment: Deployment, alias: str, actor: User, reason: str = ""
) -> Deployment:
    """Make ``deployment`` follow a protected alias of its model ('' stops following).

    Only a protected alias can be followed: it is moved by an operator or reviewer and only
    to an approved version, so following it never lets a lesser role start a rollout.
    """
    deployment = (
        Deployment.objects.select_for_update().select_related("model").get(pk=deployment.pk)
    )
    if alias:
        try:
            name_validator(alias)
        except Exception as exc:
            raise InvalidInput(f"Alias name {alias!r} is not valid.", code="invalid_alias") from exc
        existing = Alias.objects.filter(model_id=deployment.model_id, name__iexact=alias).first()
        protected = alias.lower() in PROTECTED_ALIAS_NAMES or (existing and existing.protected)
        if not protected:
            raise InvalidInput(
                f"Alias {alias!r} of {deployment.model.name} is not protected; a deployment "
                "can only follow a protected alias (e.g. champion).",
                code="alias_not_protected",
                details={"alias": alias},
            )
    before = {"follow_alias": deployment.follow_alias}
    deployment.follow_alias = alias
    deployment.save(update_fields=["follow_alias"])
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_UPDATED,
        obj=deployment,
        reason=reason,
        before=before,
        after={"follow_alias": alias},
    )
    return deployment


def deployments_alias_moved(
    *, model_id: int, alias: str, version_number: int, actor_id: int | None
) -> list[int]:
    """Start a rollout on every deployment following ``alias`` of the model; the rollout
    ids started. A deployment that cannot take it now (a rollout running, the version
    already live) gets an event saying so; the others still roll out."""
    from deployments.services import event_record, rollout_start  # services import this module

    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    started = []
    followers = Deployment.objects.filter(model_id=model_id, follow_alias__iexact=alias)
    for deployment in followers.order_by("name"):
        reason = f"alias {alias} moved to v{version_number}"
        try:
            rollout = rollout_start(deployment=deployment, alias=alias, actor=actor, reason=reason)
        except DomainError as exc:
            event_record(
                deployment=deployment,
                kind="alias_follow_skipped",
                message=f"{reason}; no rollout started: {exc.message}",
            )
            continue
        started.append(rollout.pk)
    return started
