"""How a deployment's slots serve: workers, replicas and autoscaling, adaptive batching.

One set of rules for every door (API create and update, the web form, the demo seed): the
limits below are checked here and nowhere else, and a change is audited with before/after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from accounts.models import User
from core.choices import AuditAction
from core.errors import InvalidInput
from core.services import audit_record
from deployments.models import Deployment


@dataclass(frozen=True)
class _Limit:
    low: float
    high: float
    kind: type


# field -> its range; the bounds keep one slot from taking a machine (replicas, workers) and a
# batch from holding a request for seconds.
SERVING_LIMITS: dict[str, _Limit] = {
    "workers": _Limit(1, 16, int),
    "replicas_min": _Limit(1, 32, int),
    "replicas_max": _Limit(1, 32, int),
    "scale_target_inflight": _Limit(0.5, 1000, float),
    "scale_up_seconds": _Limit(1, 3600, int),
    "scale_down_seconds": _Limit(1, 24 * 3600, int),
    "batch_max_size": _Limit(1, 1024, int),
    "batch_max_latency_ms": _Limit(1, 10_000, int),
}
SERVING_FIELDS = tuple(SERVING_LIMITS)


def serving_settings(deployment: Deployment) -> dict[str, Any]:
    """The deployment's serving settings as the API shows them."""
    settings = {name: getattr(deployment, name) for name in SERVING_FIELDS}
    settings["autoscaling"] = deployment.replicas_max > deployment.replicas_min
    return settings


def serving_validate(changes: Any, *, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """``changes`` checked field by field (and min <= max against ``current``); raises
    InvalidInput naming the first field that is wrong."""
    if not isinstance(changes, dict):
        raise InvalidInput("serving: expected an object of serving settings.")
    unknown = sorted(set(changes) - set(SERVING_FIELDS))
    if unknown:
        raise InvalidInput(
            f"serving: unknown setting {unknown[0]!r}; known: {', '.join(SERVING_FIELDS)}."
        )
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        limit = SERVING_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"serving.{name}: expected a number, got {value!r}.")
        if limit.kind is int and value != int(value):
            raise InvalidInput(f"serving.{name}: expected a whole number, got {value!r}.")
        if not limit.low <= value <= limit.high:
            raise InvalidInput(
                f"serving.{name}: must be between {limit.kind(limit.low)} and "
                f"{limit.kind(limit.high)}, got {value!r}."
            )
        clean[name] = limit.kind(value)
    if current is None and "replicas_min" in clean and "replicas_max" not in clean:
        # On create, "replicas_min: 3" alone means three fixed replicas, not a range 3..1.
        clean["replicas_max"] = clean["replicas_min"]
    merged = {"replicas_min": 1, "replicas_max": 1, **(current or {}), **clean}
    if merged["replicas_max"] < merged["replicas_min"]:
        raise InvalidInput(
            f"serving.replicas_max: must be at least replicas_min ({merged['replicas_min']}), "
            f"got {merged['replicas_max']}."
        )
    return clean


@transaction.atomic
def deployment_serving_update(
    *, deployment: Deployment, changes: dict[str, Any], actor: User | None
) -> Deployment:
    """Change how the deployment serves; audited. Replicas and autoscaling apply to the running
    slots at the next reconcile; workers and batching with the next rollout (they are part of
    how a slot's server is started and built)."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    before = serving_settings(deployment)
    clean = serving_validate(changes, current=before)
    if not clean:
        return deployment
    for name, value in clean.items():
        setattr(deployment, name, value)
    deployment.save(update_fields=list(clean))
    after = serving_settings(deployment)
    audit_record(
        actor=actor,
        action=AuditAction.DEPLOYMENT_UPDATED,
        obj=deployment,
        before={name: before[name] for name in clean},
        after={name: after[name] for name in clean},
    )
    return deployment
