"""Fixtures for monitoring: a Redis of its own, deployments with real versions.

The roll-up reads EVERY dirty buffer of its Redis and these tests empty it between tests, so
they get a redis-server of their own for the session: other suites (or another checkout's
run of this one) share the machine's Redis at the same time.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis
from django.utils import timezone

from accounts.choices import Role
from deployments.choices import RolloutKind, RolloutState, SlotColor, SlotState
from deployments.models import Deployment, Rollout, Slot
from deployments.services import deployment_create
from gateway.metrics import MetricsRecorder
from registry.models import ModelVersion
from tests.conftest import RedisServer
from tests.factories import RegisteredModelFactory
from tests.models import train_sklearn_joblib
from tests.registry.helpers import upload_version


@pytest.fixture(scope="session")
def private_redis_url(tmp_path_factory):
    from devstack.services import free_port

    server = RedisServer(free_port(), tmp_path_factory.mktemp("monitoring-redis"))
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture
def monitoring_redis(settings, private_redis_url):
    settings.REDIS_URL = private_redis_url
    client = redis.Redis.from_url(private_redis_url)
    client.flushdb()
    yield client
    client.close()


def flush(recorder: MetricsRecorder, url: str) -> int:
    """Run the gateway's own flush (async) against ``url``."""

    async def run() -> int:
        client = aioredis.Redis.from_url(url)
        try:
            return await recorder.flush(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def minute_ago(minutes: int = 1) -> float:
    """A unix time inside a recent, closed minute."""
    now = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes)
    return now.timestamp() + 30


@pytest.fixture(scope="session")
def trained_models():
    from sklearn.tree import DecisionTreeClassifier

    return {
        1: train_sklearn_joblib(seed=0),
        2: train_sklearn_joblib(seed=1, estimator=DecisionTreeClassifier(max_depth=2)),
    }


@pytest.fixture
def registered_model(scientist):
    # Names of our own: the test database is shared with other suites running at once.
    return RegisteredModelFactory(name=f"mon-{uuid.uuid4().hex[:8]}", owner=scientist)


@pytest.fixture
def versions(registered_model, scientist, trained_models) -> dict[int, ModelVersion]:
    """Two versions with reference samples (not validated: nothing here loads a model)."""
    return {
        n: upload_version(registered_model, scientist, trained, validate=False)
        for n, trained in trained_models.items()
    }


@pytest.fixture
def deployment(registered_model, make_user, versions) -> Deployment:
    """A deployment serving v2 on green, baking, with v1 still warm on blue."""
    operator = make_user(Role.OPERATOR, "olive")
    deployment = deployment_create(
        name=f"{registered_model.name}-prod",
        model=registered_model,
        environment="production",
        actor=operator,
        bake_seconds=900,
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.BLUE).update(
        version=versions[1], state=SlotState.READY, url="http://127.0.0.1:1"
    )
    Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(
        version=versions[2], state=SlotState.READY, url="http://127.0.0.1:1"
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.GREEN)
    switched = timezone.now() - timedelta(minutes=10)
    Rollout.objects.create(
        deployment=deployment,
        version=versions[1],
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.BLUE,
        state=RolloutState.LIVE,
        finished_at=switched - timedelta(days=2),  # before the alerts look back
    )
    Rollout.objects.create(
        deployment=deployment,
        version=versions[2],
        previous_version=versions[1],
        kind=RolloutKind.ROLLOUT,
        target_slot=SlotColor.GREEN,
        state=RolloutState.BAKING,
        bake_until=switched + timedelta(seconds=900),
        steps=[{"at": switched.isoformat(), "state": "switching", "message": "traffic switched"}],
    )
    deployment.refresh_from_db()
    return deployment


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
