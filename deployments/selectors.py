from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, Prefetch, QuerySet, Subquery

from core.errors import NotFound
from deployments.choices import ACTIVE_ROLLOUT_STATES, RolloutState
from deployments.models import Deployment, DeploymentKey, Rollout, Slot
from registry.models import ModelVersion


def deployment_list() -> QuerySet[Deployment]:
    return (
        Deployment.objects.select_related("model", "created_by")
        .prefetch_related(
            Prefetch("slots", Slot.objects.select_related("version")),
        )
        .order_by("name")
    )


def deployment_list_with_last_rollout() -> QuerySet[Deployment]:
    """``deployment_list`` with the state and kind of each one's latest rollout
    (``last_rollout_state``, ``last_rollout_kind``; None before the first)."""
    last = Rollout.objects.filter(deployment=OuterRef("pk")).order_by("-created_at")
    return deployment_list().annotate(
        last_rollout_state=Subquery(last.values("state")[:1]),
        last_rollout_kind=Subquery(last.values("kind")[:1]),
    )


def deployment_list_serving(*, model_id: int) -> QuerySet[Deployment]:
    """The model's deployments that have a live slot, slots and their versions prefetched."""
    return (
        Deployment.objects.filter(model=model_id)
        .exclude(live_slot="")
        .prefetch_related("slots__version")
    )


def deployment_get(*, name: str) -> Deployment:
    deployment = deployment_list().filter(name__iexact=name).first()
    if deployment is None:
        raise NotFound(f"No deployment named {name!r}.")
    return deployment


def deployment_ref(*, name: str) -> Deployment:
    """The deployment row alone (no slots or model prefetched), for writes that lock it anyway.

    The rollback endpoint uses it: every query before the route flips is on the clock.
    """
    deployment = Deployment.objects.filter(name__iexact=name).first()
    if deployment is None:
        raise NotFound(f"No deployment named {name!r}.")
    return deployment


def deployment_key_list(*, deployment: Deployment) -> QuerySet[DeploymentKey]:
    """The deployment's keys, active and revoked, oldest first."""
    return DeploymentKey.objects.filter(deployment=deployment).order_by("created_at", "id")


def deployment_current_rollout(deployment: Deployment) -> Rollout | None:
    return (
        Rollout.objects.select_related("version")
        .filter(deployment=deployment, state__in=[*ACTIVE_ROLLOUT_STATES, RolloutState.BAKING])
        .order_by("-created_at")
        .first()
    )


def rollout_list(*, deployment: Deployment) -> QuerySet[Rollout]:
    return Rollout.objects.select_related(
        "version", "previous_version", "created_by", "deployment"
    ).filter(deployment=deployment)


def rollout_get(*, deployment: Deployment, rollout_id: int) -> Rollout:
    rollout = rollout_list(deployment=deployment).filter(pk=rollout_id).first()
    if rollout is None:
        raise NotFound(f"{deployment} has no rollout {rollout_id}.")
    return rollout


def lineage_deployments_of_version(version: ModelVersion) -> list[dict[str, Any]]:
    """Deployments whose slots serve this version, as downstream lineage nodes."""
    items = []
    for slot in Slot.objects.select_related("deployment").filter(version=version):
        node_id = f"deployment:{slot.deployment.name}"
        items.append(
            {
                "id": node_id,
                "node": {
                    "id": node_id,
                    "type": "deployment",
                    "label": slot.deployment.name,
                    "environment": slot.deployment.environment,
                    "live": slot.deployment.live_slot == slot.color,
                },
                "edge": {
                    "source": f"version:{version.pk}",
                    "target": node_id,
                    "relation": f"served ({slot.color})",
                },
            }
        )
    return items
