from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import OuterRef, Prefetch, QuerySet, Subquery
from django.utils import timezone

from core.errors import NotFound
from deployments import backends
from deployments.choices import ACTIVE_ROLLOUT_STATES, DEPLOYABLE_STATES, RolloutState
from deployments.models import Deployment, DeploymentKey, Rollout, Slot
from gateway.shadow_reports import shadow_read
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


def rollback_target_version(
    *, deployment: Deployment, live: Slot, idle: Slot | None
) -> ModelVersion | None:
    """The version a rollback of ``deployment`` goes back to; None when there is none.

    The idle slot's version, else the previous version of the last rollout that took
    traffic (baking or live), but never the version ``live`` serves. The rollback service
    decides with it under the deployment's lock, the page with it to ask for confirmation.
    ``live`` and ``idle`` come with their versions loaded: a query only when ``idle`` has none.
    """
    target = idle.version if idle is not None else None
    if target is None:
        last = (
            Rollout.objects.filter(
                deployment=deployment, state__in=[RolloutState.BAKING, RolloutState.LIVE]
            )
            .select_related("previous_version")
            .order_by("-created_at")
            .first()
        )
        target = last.previous_version if last else None
    if target is not None and target.pk == live.version_id:
        return None
    return target


def deployment_rollback_target(
    *, deployment: Deployment
) -> tuple[ModelVersion | None, ModelVersion | None]:
    """(live version, version a rollback would go back to) of a deployment from
    ``deployment_list`` (its slots prefetched); (None, None) while nothing is live."""
    slots = list(deployment.slots.all())
    live = next((s for s in slots if s.color == deployment.live_slot), None)
    if live is None or live.version is None:
        return None, None
    idle = next((s for s in slots if s.color != deployment.live_slot), None)
    return live.version, rollback_target_version(deployment=deployment, live=live, idle=idle)


def version_deployable_list(*, deployment: Deployment) -> QuerySet[ModelVersion]:
    """The versions of the deployment's model its environment may serve, newest first."""
    return ModelVersion.objects.filter(
        model=deployment.model_id, state__in=DEPLOYABLE_STATES[deployment.environment]
    ).order_by("-number")


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


def shadow_windows(rollout: Rollout, *, minutes: int = 10) -> list[dict[str, Any]]:
    """The shadow's comparison per minute, newest first, over its last ``minutes`` minutes
    (since it began): what the gateway's processes recorded (gateway.shadow_reports)."""
    began = rollout.step_started_at or rollout.state_changed_at
    end = rollout.finished_at or timezone.now()
    minute = end.replace(second=0, microsecond=0)
    client = backends.route_store()  # shared and cached: never closed here
    windows: list[dict[str, Any]] = []
    while minute + timedelta(minutes=1) > began and len(windows) < minutes:
        totals = shadow_read(
            client,
            rollout.deployment.name,
            rollout.version.number,
            minute,
            minute + timedelta(minutes=1),
        )
        windows.append({"start": minute, **totals.as_dict()})
        minute -= timedelta(minutes=1)
    return windows
