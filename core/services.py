from __future__ import annotations

from typing import Any

from django.db import models

from core.choices import AuditAction
from core.models import AuditEvent


def audit_record(
    *,
    actor: Any | None,
    action: AuditAction,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    via: str = "",
    reason: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event. Call it inside the transaction of the change it records,
    so the change and its record commit (or roll back) together."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)[:200]
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor_id=user.pk if user is not None else None,
        actor_name=user.get_username() if user is not None else "",
        # "system": a task or sweep acting alone; "direct": code called outside a request.
        via=via or getattr(actor, "audit_via", "") or ("system" if actor is None else "direct"),
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr,
        reason=reason,
        before=before,
        after=after,
    )
