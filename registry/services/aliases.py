from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from accounts.permissions import user_capabilities
from core.choices import AuditAction, Capability
from core.errors import InvalidInput, InvalidState, NotAllowed, NotFound
from core.services import audit_record
from registry.choices import VersionState
from registry.models import Alias, ModelVersion, RegisteredModel, name_validator

# Aliases that are always protected, whatever the request says.
PROTECTED_ALIAS_NAMES = frozenset({"champion", "production", "prod"})
UNUSABLE_STATES = {VersionState.INVALID, VersionState.REJECTED, VersionState.ARCHIVED}
# A protected alias is what production and schedules follow: moving it is a release, so it
# takes an operator (deploy) or a reviewer, not whoever uploaded the version.
PROTECTED_ALIAS_CAPABILITIES = frozenset({Capability.DEPLOY, Capability.REVIEW})

logger = logging.getLogger(__name__)

# Called after a protected alias moved and the move committed, with keyword arguments
# model_id, alias, version_number, actor_id. Registry is below deployments and may not
# import it: deployments registers its follower here (DeploymentsConfig.ready). What a
# callback returns (deployments: the rollouts it started) is not used here.
ProtectedAliasMoved = Callable[..., object]
_protected_alias_moved: list[ProtectedAliasMoved] = []


def alias_register_protected_moved(callback: ProtectedAliasMoved) -> None:
    """Run ``callback`` after every committed move of a protected alias (registered once)."""
    if callback not in _protected_alias_moved:
        _protected_alias_moved.append(callback)


def _notify_protected_moved(**event: Any) -> None:
    for callback in _protected_alias_moved:
        try:
            callback(**event)
        except Exception:  # the move is committed: a follower's failure must not undo or 500 it
            logger.exception("protected alias follower %r failed for %s", callback, event)


def _check_may_write(*, actor: User, token: Any, name: str, protected: bool) -> None:
    held = user_capabilities(actor, token)
    if protected:
        if not held & PROTECTED_ALIAS_CAPABILITIES:
            raise NotAllowed(
                f"Alias '{name}' is protected: moving it needs the operator or reviewer "
                f"role; your role is '{actor.role}'.",
                code="alias_protected_forbidden",
                details={"alias": name},
            )
    elif Capability.SET_ALIAS not in held:
        raise NotAllowed(
            f"Moving alias '{name}' needs the data scientist or operator role; "
            f"your role is '{actor.role}'.",
            details={"alias": name},
        )


@transaction.atomic
def alias_set(
    *,
    model: RegisteredModel,
    name: str,
    version_number: int,
    actor: User,
    protected: bool | None = None,
    reason: str = "",
    token: Any = None,
) -> Alias:
    """Point ``model@name`` at a version. A protected alias only points at an approved one,
    and only an operator or reviewer moves (or creates) one; ``token`` narrows the actor's
    role by its scopes."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise InvalidInput(f"Alias name {name!r}: {exc.messages[0]}") from exc
    version = ModelVersion.objects.filter(model=model, number=version_number).first()
    if version is None:
        raise NotFound(f"{model.name} has no version {version_number}.")
    alias = Alias.objects.select_for_update().filter(model=model, name=name).first()
    is_protected = (
        name.lower() in PROTECTED_ALIAS_NAMES
        or bool(protected)
        or (alias is not None and alias.protected)
    )
    _check_may_write(actor=actor, token=token, name=name, protected=is_protected)
    if version.state in UNUSABLE_STATES:
        raise InvalidState(f"{version} is {version.state}; an alias cannot point at it.")
    if is_protected and version.state != VersionState.APPROVED:
        raise InvalidState(
            f"Alias '{name}' is protected: it can only point at an approved "
            f"version, and {version} is {version.state}.",
            code="alias_protected",
        )
    before = {"version": alias.version.number, "protected": alias.protected} if alias else None
    if alias is None:
        alias = Alias(model=model, name=name)
    alias.version = version
    alias.protected = is_protected
    alias.updated_by = actor
    alias.save()
    audit_record(
        actor=actor,
        action=AuditAction.ALIAS_SET,
        obj=alias,
        reason=reason,
        before=before,
        after={"version": version.number, "protected": is_protected},
    )
    if is_protected and (before is None or before["version"] != version.number):
        event = {
            "model_id": model.pk,
            "alias": alias.name,
            "version_number": version.number,
            "actor_id": actor.pk,
        }
        transaction.on_commit(lambda: _notify_protected_moved(**event))
    return alias


@transaction.atomic
def alias_delete(
    *, model: RegisteredModel, name: str, actor: User, reason: str = "", token: Any = None
) -> None:
    alias = Alias.objects.select_for_update().filter(model=model, name=name).first()
    if alias is None:
        raise NotFound(f"{model.name} has no alias {name!r}.")
    _check_may_write(
        actor=actor,
        token=token,
        name=name,
        protected=alias.protected or name.lower() in PROTECTED_ALIAS_NAMES,
    )
    before = {"version": alias.version.number, "protected": alias.protected}
    audit_record(
        actor=actor, action=AuditAction.ALIAS_DELETED, obj=alias, reason=reason, before=before
    )
    alias.delete()
