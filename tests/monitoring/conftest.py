"""Fixtures for monitoring: a Redis of its own, deployments with real versions.

The roll-up reads EVERY dirty buffer of its Redis and these tests empty it between tests, so
they get a redis-server of their own for the session: other suites (or another checkout's
run of this one) share the machine's Redis at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import redis.asyncio as aioredis
from django.utils import timezone

from accounts.choices import Role
from deployments.choices import RolloutKind, RolloutState, SlotColor, SlotState
from deployments.models import Deployment, Rollout, Slot
from deployments.services import deployment_create
from gateway.metrics import MetricsRecorder
from gateway.sampling import PayloadSampler
from registry.modelkit.contract import json_safe
from registry.models import ModelVersion
from tests.conftest import RedisServer
from tests.factories import RegisteredModelFactory
from tests.gateway import support
from tests.models import contract_cases, train_sklearn_joblib
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


def serve_traffic(recorder, deployment, version, *, requests, errors, median_ms, now, seed):
    """``requests`` answers of ``version`` recorded by the gateway's recorder at ``now``: the
    first ``errors`` of them 5xx, latencies log-normal around ``median_ms``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for i, latency in enumerate(median_ms * np.exp(rng.normal(0, 0.3, requests))):
        recorder.record(
            deployment=deployment.name,
            version=version,
            status=500 if i < errors else 200,
            latency_s=float(latency) / 1e3,
            rows=1,
            now=now,
        )


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


def stream_samples(
    settings,
    deployment: str,
    version: int,
    records: list,
    *,
    per_request: int,
    predictions=lambda chunk: [0] * len(chunk),
) -> int:
    """Write ``records`` to the deployment's sample stream through the gateway's own sampler,
    ``per_request`` rows a request, as the gateway would; the number of entries written."""
    sampler = PayloadSampler(
        rate=1.0,
        max_rows=per_request,
        buffer_size=10_000,
        stream_maxlen=10_000,
        rng=random.Random(1),
    )
    for offset in range(0, len(records), per_request):
        chunk = records[offset : offset + per_request]
        sampler.offer(
            deployment=deployment,
            version=version,
            api="predict",
            rows=len(chunk),
            inputs={"instances": chunk},
            outputs=json.dumps({"predictions": predictions(chunk)}).encode(),
        )

    async def run():
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return await sampler.flush(client)
        finally:
            await client.aclose()

    written = asyncio.run(run())
    # Windows are [start, end) in ms: a window ending in the very millisecond of the last
    # XADD would leave it out, so "now" must be at least one millisecond later.
    time.sleep(0.005)
    return written


@pytest.fixture
def throwaway_redis(settings, tmp_path: Path):
    """A Redis of the test's own, which it may stall (SIGSTOP) and kill."""
    server = support.RedisServer(port=support.free_port(), workdir=tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


# A real pipeline (string categoricals, zip codes that look numeric) validated in the sandbox
# child, which decides its contract; for the drift and data-quality tests.
CASE = "sklearn_pipeline_categorical"


@pytest.fixture(scope="module")
def pipeline_case():
    return contract_cases()[CASE]


@pytest.fixture
def pipeline_version(registered_model, scientist, pipeline_case):
    trained = SimpleNamespace(
        artifact=pipeline_case.artifact, reference_csv=pipeline_case.reference_csv(60)
    )
    return upload_version(registered_model, scientist, trained)


@pytest.fixture
def pipeline_serving(registered_model, make_user, pipeline_version) -> Deployment:
    deployment = deployment_create(
        name=f"{registered_model.name}-prod",
        model=registered_model,
        environment="production",
        actor=make_user(Role.OPERATOR, "olive"),
    )
    # No model process here: the prediction baseline waits for a slot that answers.
    Slot.objects.filter(deployment=deployment, color=SlotColor.GREEN).update(
        version=pipeline_version, state=SlotState.READY, url="http://127.0.0.1:1"
    )
    Deployment.objects.filter(pk=deployment.pk).update(live_slot=SlotColor.GREEN)
    deployment.refresh_from_db()
    return deployment


def send_rows(settings, deployment, version, frame, *, per_request=30, positional=False) -> int:
    """The rows as a client sends them (objects, or lists in the contract's order), through
    the gateway's own sampler."""
    if positional:
        records = [json_safe(list(row)) for row in frame.itertuples(index=False)]
    else:
        records = [json_safe(row) for row in frame.to_dict(orient="records")]
    return stream_samples(
        settings,
        deployment.name,
        version.number,
        records,
        per_request=per_request,
        predictions=lambda chunk: [],
    )


# --- webhook receivers ------------------------------------------------------------------------


class _Receiver:
    """A real HTTP server on 127.0.0.1 that answers with the statuses it is given."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory(settings):
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.MODELYARD_WEBHOOK_BACKOFF_SECONDS = 0
    made = []

    def make(statuses=()):
        receiver = _Receiver(list(statuses))
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()
