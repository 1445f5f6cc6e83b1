from __future__ import annotations

from collections.abc import Iterator

import pytest

from deployments import backends
from deployments.choices import BuildState
from deployments.models import Build, Deployment
from gateway.routes import ROUTES_KEY, Route, route_parse_one, route_remove
from registry.models import ModelVersion
from tests.deployments.fakes import InMemoryRuntimeBackend


@pytest.fixture
def fake_backend(db, monkeypatch) -> Iterator[InMemoryRuntimeBackend]:
    """The services' runtime backend for this test: in memory, its slots on real sockets.

    Routes go to this run's Redis (REDIS_URL) as in production; the ones the test's
    deployments published are removed after it.
    """
    backend = InMemoryRuntimeBackend()
    monkeypatch.setattr(backends, "runtime_backend", lambda: backend)
    backends.route_store.cache_clear()
    yield backend
    backend.close()
    for name in Deployment.objects.values_list("name", flat=True):
        route_remove(backends.route_store(), name)


def built(version: ModelVersion) -> Build:
    """The version's build, succeeded (its Bento is only a tag: the fake backend serves it)."""
    return Build.objects.create(
        version=version,
        state=BuildState.SUCCEEDED,
        bento_tag=f"{version.model.name}:v{version.number}",
    )


def published(deployment: Deployment) -> Route | None:
    """The route the gateway would read for ``deployment`` right now."""
    return route_parse_one(
        deployment.name, backends.route_store().hget(ROUTES_KEY, deployment.name)
    )
