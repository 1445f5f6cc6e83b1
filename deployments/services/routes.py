"""A deployment's gateway route: published from the database, repaired when Redis differs."""

from __future__ import annotations

import logging
from typing import cast

from django.db import transaction

from deployments import backends
from deployments.models import Deployment, DeploymentKey, Slot
from deployments.services._steps import event_record
from gateway.routes import ROUTES_KEY, Route, route_parse_one, route_publish
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
    )


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
    if stored is not None and (
        stored.version,
        stored.slot,
        stored.upstreams,
        stored.state,
        stored.key_hashes,
    ) == (wanted.version, wanted.slot, wanted.upstreams, wanted.state, wanted.key_hashes):
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
