"""Creating deployments, and issuing and revoking their gateway keys."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from core.choices import AuditAction
from core.errors import Conflict, InvalidInput, NotFound
from core.services import audit_record
from deployments.choices import Environment, SlotColor
from deployments.models import Deployment, DeploymentKey, Slot
from deployments.services.routes import route_sync
from deployments.services.serving import serving_settings, serving_validate
from gateway.routes import deployment_key_hash
from registry.models import RegisteredModel, name_validator

logger = logging.getLogger(__name__)


KEY_PREFIX = "myd_"


# Guard policies are monitoring's rules, and deployments must not import monitoring: the
# monitoring app registers its validator here at start-up (apps.py), as lineage providers do.
GuardPolicyValidator = Callable[[dict[str, Any]], dict[str, Any]]
_guard_policy_validators: list[GuardPolicyValidator] = []


def guard_policy_validator_register(validator: GuardPolicyValidator) -> None:
    if validator not in _guard_policy_validators:
        _guard_policy_validators.append(validator)


def _guard_policy_clean(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` checked by every registered validator (each raises InvalidInput naming the
    field); unchecked only where no monitoring app is installed."""
    for validator in _guard_policy_validators:
        policy = validator(policy)
    return policy


@transaction.atomic
def deployment_create(
    *,
    name: str,
    model: RegisteredModel,
    environment: str,
    actor: User,
    bake_seconds: int = 300,
    guard_policy: dict[str, Any] | None = None,
    description: str = "",
    serving: dict[str, Any] | None = None,
) -> Deployment:
    """A deployment with its two (stopped) slots; nothing serves until the first rollout."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise InvalidInput(f"name: {exc.messages[0]}") from exc
    if environment not in Environment.values:
        raise InvalidInput(f"environment must be one of {', '.join(Environment.values)}.")
    serving_fields = serving_validate(serving or {})
    guard_policy = _guard_policy_clean(guard_policy or {})
    if Deployment.objects.filter(name__iexact=name).exists():
        raise Conflict(f"A deployment named {name!r} already exists.", code="name_taken")
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                name=name,
                model=model,
                environment=environment,
                bake_seconds=bake_seconds,
                guard_policy=guard_policy or {},
                description=description,
                created_by=actor,
                **serving_fields,
            )
    except IntegrityError as exc:
        raise Conflict(f"A deployment named {name!r} already exists.", code="name_taken") from exc
    Slot.objects.bulk_create(Slot(deployment=deployment, color=c) for c in SlotColor.values)
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_CREATED,
        obj=deployment,
        after={
            "model": model.name,
            "environment": environment,
            "bake_seconds": bake_seconds,
            "serving": serving_settings(deployment),
        },
    )
    return deployment


@transaction.atomic
def deployment_key_create(
    *, deployment: Deployment, name: str, actor: User | None
) -> tuple[DeploymentKey, str]:
    """Issue a gateway key for the deployment; the plaintext is returned once, never stored."""
    name = (name or "default").strip()
    if not name:
        raise InvalidInput("name: a key needs a name (or leave it out for 'default').")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = DeploymentKey.objects.create(
        deployment=deployment, name=name, digest=deployment_key_hash(key)
    )
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_KEY_CREATED,
        obj=record,
        after={"deployment": deployment.name, "name": record.name, "key_id": record.pk},
    )
    # The gateway learns the key when the route is republished (pub/sub: milliseconds).
    transaction.on_commit(lambda: route_sync(deployment_id=deployment.pk))
    return record, key


@transaction.atomic
def deployment_key_revoke(
    *, deployment: Deployment, key_id: int, actor: User | None, reason: str = ""
) -> DeploymentKey:
    """Revoke one of the deployment's keys; the gateway refuses it once the route is republished.

    Revoking is final (a revoked key cannot come back; issue a new one), so revoking twice is a
    conflict rather than a silent success.
    """
    key = (
        DeploymentKey.objects.select_for_update()
        .select_related("deployment")
        .filter(deployment=deployment, pk=key_id)
        .first()
    )
    if key is None:
        raise NotFound(f"{deployment} has no key with id {key_id}.")
    if key.revoked_at is not None:
        raise Conflict(
            f"Key {key.name!r} (id {key.pk}) of {deployment} was already revoked at "
            f"{key.revoked_at:%Y-%m-%d %H:%M:%S} UTC.",
            code="key_already_revoked",
        )
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_KEY_REVOKED,
        obj=key,
        reason=reason,
        before={"revoked_at": None},
        after={"deployment": deployment.name, "name": key.name, "key_id": key.pk},
    )
    transaction.on_commit(lambda: route_sync(deployment_id=deployment.pk))
    return key
