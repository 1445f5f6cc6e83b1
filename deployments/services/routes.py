"""A deployment's gateway route: published from the database, repaired when Redis differs."""

from __future__ import annotations

import logging
from typing import cast

from django.db import transaction

from deployments import backends
from deployments.choices import RolloutState
from deployments.models import Deployment, DeploymentKey, Rollout, Slot
from deployments.services._steps import event_record
from gateway.routes import ROUTES_KEY, Arm, Route, Sticky, route_parse_one, route_publish
from gateway.routes import Slot as RouteSlot

logger = logging.getLogger(__name__)


def route_sync(*, deployment_id: int) -> Route:
    """Publish the deployment's route as the database records it (idempotent).

    Under the deployment's row lock, published before the lock is released: a switch or a
    rollback publishes its route inside the transaction that records it (holding this lock),
    so a concurrent sync -- the reconcile sweep, a key change -- waits for it and publishes the
    committed state after it, never a stale one over it.
    """
    with transaction.atomic(savepoint=False):
        deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
        live = (
            Slot.objects.select_related("version")
            .filter(deployment=deployment, color=deployment.live_slot)
            .first()
            if deployment.live_slot
            else None
        )
        route = route_of(deployment, live)
        route_publish(backends.route_store(), route)
    return route


def route_of(deployment: Deployment, live: Slot | None) -> Route:
    """The route that sends ``deployment``'s traffic to ``live`` (its version loaded)."""
    key_hashes = tuple(
        DeploymentKey.objects.filter(deployment=deployment, revoked_at__isnull=True)
        .order_by("created_at", "id")
        .values_list("digest", flat=True)
    )
    upstreams = live.ready_urls if live is not None else []
    canary, shadow, sticky = _arms_of(deployment)
    if live is None or live.version is None or not upstreams:
        # No slot live, or none of its replicas ready: the gateway answers 503 + Retry-After
        # rather than send requests to servers that refuse them.
        return Route(
            deployment=deployment.name,
            version=0,
            slot="blue",
            upstream="http://127.0.0.1:1",
            key_hashes=key_hashes,
            state="none",
        )
    return Route(
        deployment=deployment.name,
        version=live.version.number,
        slot=cast(RouteSlot, live.color),  # a SlotColor value: the route's slots are the same two
        upstream=upstreams[0],
        upstreams=tuple(upstreams),
        key_hashes=key_hashes,
        state="live",
        canary=canary,
        shadow=shadow,
        sticky=sticky,
    )


def _arms_of(deployment: Deployment) -> tuple[Arm | None, Arm | None, Sticky | None]:
    """The running canary's or shadow's arm (deployments.services.progressive), if its slot has
    a ready replica: (canary, shadow, sticky key)."""
    from deployments.services.progressive import RUNNING, arm_weight

    rollout = (
        Rollout.objects.select_related("version")
        .filter(deployment=deployment, state__in=RUNNING)
        .first()
    )
    if rollout is None or rollout.target_slot == deployment.live_slot:
        return None, None, None
    slot = Slot.objects.filter(deployment=deployment, color=rollout.target_slot).first()
    urls = slot.ready_urls if slot is not None else []
    if not urls:
        return None, None, None  # nothing ready to send a share to: live serves all
    arm = Arm(
        version=rollout.version.number,
        slot=cast(RouteSlot, rollout.target_slot),
        upstreams=tuple(urls),
        weight=arm_weight(rollout),
    )
    sticky = rollout.plan.get("sticky") or None
    key = Sticky(header=sticky.get("header"), field=sticky.get("field")) if sticky else None
    if rollout.state == RolloutState.SHADOW:
        return None, arm, None
    return arm, None, key


def route_repair(*, deployment: Deployment) -> bool:
    """Republish a route that Redis lost or that disagrees with the database."""
    with transaction.atomic():
        # The lock first (route_sync takes it again, harmlessly): what Redis holds is read
        # after any switch in flight has committed and published.
        Deployment.objects.select_for_update().only("pk").get(pk=deployment.pk)
        stored = route_parse_one(
            deployment.name, backends.route_store().hget(ROUTES_KEY, deployment.name)
        )
        wanted = route_sync(deployment_id=deployment.pk)
    if stored is not None and _same_route(stored, wanted):
        return False
    event_record(
        deployment=deployment,
        kind="route_republished",
        message=(
            "route was missing from Redis"
            if stored is None
            else "route in Redis disagreed with the database"
        )
        + f"; republished v{wanted.version} on {wanted.slot} ({wanted.state})",
    )
    return True


def _same_route(a: Route, b: Route) -> bool:
    """Equal in everything the gateway acts on (not ``updated_at``)."""
    return (
        a.version,
        a.slot,
        a.upstreams,
        a.state,
        a.key_hashes,
        a.canary,
        a.shadow,
        a.sticky,
    ) == (
        b.version,
        b.slot,
        b.upstreams,
        b.state,
        b.key_hashes,
        b.canary,
        b.shadow,
        b.sticky,
    )
