from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import User
from accounts.permissions import user_has_capability
from core.choices import AuditAction, Capability
from core.errors import Conflict, InvalidInput, NotAllowed
from core.services import audit_record
from registry.models import RegisteredModel

EDITABLE_FIELDS = (
    "description",
    "team",
    "tags",
    "intended_use",
    "limitations",
    "card_owners",
    "approvals_required",
)
# The review policy: who may lower it decides what "approved" means, so changing it is a
# reviewer's (or admin's) call, never the data scientist's whose versions it gates.
POLICY_FIELDS = frozenset({"approvals_required"})


def _snapshot(model: RegisteredModel) -> dict[str, Any]:
    return {field: getattr(model, field) for field in EDITABLE_FIELDS}


def _full_clean(model: RegisteredModel) -> None:
    try:
        model.full_clean(exclude=["owner"], validate_constraints=False)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidInput(f"{field}: {messages[0]}", details=exc.message_dict) from exc


@transaction.atomic
def model_create(*, name: str, owner: User, **fields: Any) -> RegisteredModel:
    """Register a model; names are unique regardless of case ("Churn" == "churn")."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown model field(s): {', '.join(sorted(unknown))}.")
    model = RegisteredModel(name=name, owner=owner, **fields)
    _full_clean(model)
    existing = RegisteredModel.objects.filter(name__iexact=name).first()
    if existing is not None:
        raise Conflict(
            f"A model named {existing.name!r} already exists (names ignore case).",
            code="name_taken",
        )
    try:
        with transaction.atomic():
            model.save()
    except IntegrityError as exc:  # a concurrent create won the race
        raise Conflict(
            f"A model named {name!r} already exists (names ignore case).", code="name_taken"
        ) from exc
    audit_record(
        actor=owner,
        action=AuditAction.MODEL_CREATED,
        obj=model,
        after={"name": model.name, **_snapshot(model)},
    )
    return model


def _check_may_change(*, actor: User, token: Any, changed: set[str]) -> None:
    policy = changed & POLICY_FIELDS
    if policy and not user_has_capability(actor, Capability.REVIEW, token):
        raise NotAllowed(
            f"Changing the review policy ({', '.join(sorted(policy))}) needs the reviewer or "
            f"admin role; your role is '{actor.role}'.",
            code="policy_forbidden",
            details={"fields": sorted(policy)},
        )
    card = changed - POLICY_FIELDS
    if card and not user_has_capability(actor, Capability.MANAGE_MODELS, token):
        raise NotAllowed(
            f"Editing a model's card ({', '.join(sorted(card))}) needs the data scientist or "
            f"admin role; your role is '{actor.role}'.",
            details={"fields": sorted(card)},
        )


@transaction.atomic
def model_update(
    *, model: RegisteredModel, actor: User, token: Any = None, reason: str = "", **fields: Any
) -> RegisteredModel:
    """Edit a model's description, card and review policy (not its name).

    Card fields need ``manage_models``, the review policy needs ``review`` (a field sent
    unchanged needs nothing). ``token`` narrows the actor's role by its scopes. A policy
    change applies to versions submitted from now on: those in review keep the snapshot
    taken at submit (see ``registry.services.transitions``).
    """
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput(f"Field(s) cannot be changed: {', '.join(sorted(unknown))}.")
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    before = _snapshot(model)
    for field, value in fields.items():
        setattr(model, field, value)
    after = _snapshot(model)
    changed = {k: v for k, v in after.items() if before[k] != v}
    _check_may_change(actor=actor, token=token, changed=set(changed))
    _full_clean(model)
    model.save()
    if changed:
        audit_record(
            actor=actor,
            action=AuditAction.MODEL_UPDATED,
            obj=model,
            reason=reason,
            before={k: before[k] for k in changed},
            after=changed,
        )
    return model
