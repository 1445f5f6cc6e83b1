"""One helper for every explicit state machine (model versions, rollouts, batch jobs).

A machine is an allowed-transitions table over a model's state field. ``check`` refuses a
move the table does not allow with ``InvalidState`` (the one error body:
``details={"state", "requested"}``). ``move`` writes the move as one conditional UPDATE
(``WHERE pk = … AND state = <the state the caller read>``), so of two writers that read the
same state exactly one wins and the other is told so; the state-changed-at field, the
caller's extra fields and the audit record go with it, in the same transaction.

Hand-written, not a library, because it is ~60 lines and the libraries bring what the house
style rules out: django-fsm / django-fsm-2 (maintained again) put transitions on model
methods, check concurrency in a ``save()`` override (ConcurrentTransitionMixin) and fire
signals; django-viewflow is an AGPL BPMN workflow framework, far more than a table and an
UPDATE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction
from django.db.models import F, JSONField, Q, Value
from django.db.models.expressions import CombinedExpression
from django.utils import timezone

from core.choices import AuditAction
from core.errors import InvalidState
from core.services import audit_record

M = TypeVar("M", bound=models.Model)


def json_append(field: str, *items: Any) -> CombinedExpression:
    """``field || items`` (jsonb): append to a JSON list (a step log) in the move's UPDATE,
    from the row as it is, so an entry another writer appended is never overwritten."""
    return CombinedExpression(
        F(field), "||", Value(list(items), output_field=JSONField()), output_field=JSONField()
    )


class StateMachine(Generic[M]):
    """The allowed moves of ``model.<field>`` and the one writer of that field."""

    def __init__(
        self,
        model: type[M],
        allowed: Mapping[str, Iterable[str]],
        *,
        field: str = "state",
        changed_at_field: str | None = "state_changed_at",
    ) -> None:
        self.model = model
        self.field = field
        self.changed_at_field = changed_at_field
        self.allowed: dict[str, frozenset[str]] = {
            str(state): frozenset(str(t) for t in targets) for state, targets in allowed.items()
        }
        # Checked at import, so a typo in a table stops start-up instead of a request.
        unknown = {t for targets in self.allowed.values() for t in targets} - set(self.allowed)
        state_field = model._meta.get_field(field)
        choices = {str(value) for value, _ in getattr(state_field, "choices", None) or ()}
        missing = choices - set(self.allowed)
        extra = set(self.allowed) - choices if choices else set()
        if unknown or missing or extra:
            raise ImproperlyConfigured(
                f"{model.__name__}.{field} transitions: unknown targets {sorted(unknown)}, "
                f"states without a row {sorted(missing)}, rows that are no state {sorted(extra)}."
            )

    def can(self, current: str, to: str) -> bool:
        return str(to) in self.allowed[str(current)]

    def check(self, obj: M, to: str) -> None:
        """Raise ``InvalidState`` unless ``obj``'s current state may become ``to``."""
        current = str(getattr(obj, self.field))
        if not self.can(current, to):
            raise InvalidState(
                f"{obj} is {current}; it cannot become {to}.",
                details={"state": current, "requested": str(to)},
            )

    def move(
        self,
        obj: M,
        to: str,
        *,
        fields: Mapping[str, Any] | None = None,
        where: Q | None = None,
        at: datetime | None = None,
        actor: Any | None = None,
        audit_action: AuditAction | None = None,
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> bool:
        """Move ``obj`` from the state it was read in to ``to``; False (nothing written) when
        another writer moved the row first or ``where`` (a lease, a token) no longer holds.

        ``fields`` are written in the same UPDATE; a value may be an expression (``F()``, a
        JSON append) that the database computes from the row as it is. ``at`` (default now)
        is the state-changed-at time, for a caller whose ``finished_at`` must equal it. The
        audit record,
        written when ``audit_action`` is given, commits or rolls back with the move.
        """
        self.check(obj, to)
        before = str(getattr(obj, self.field))
        values: dict[str, Any] = {**(fields or {}), self.field: str(to)}
        if self.changed_at_field:
            values[self.changed_at_field] = at or timezone.now()
        with transaction.atomic():
            rows = self.model._default_manager.filter(pk=obj.pk, **{self.field: before})
            if where is not None:
                rows = rows.filter(where)
            if not rows.update(**values):
                return False
            computed = [name for name, v in values.items() if hasattr(v, "resolve_expression")]
            for name, value in values.items():
                if name not in computed:
                    setattr(obj, name, value)
            if computed:  # the database's result, not the expression, belongs on the object
                obj.refresh_from_db(fields=computed)
            if audit_action is not None:
                audit_record(
                    actor=actor,
                    action=audit_action,
                    obj=obj,
                    reason=reason,
                    before={"state": before},
                    after={"state": str(to), **(evidence or {})},
                )
        return True
