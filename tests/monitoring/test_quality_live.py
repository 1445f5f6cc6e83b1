"""End to end (issue 20): predictions through a real gateway, their inference ids (the gateway's
and a client's own), labels posted later over the API for part of them, and quality equal to
scikit-learn's on the same pairs. (The accuracy guard's rollback is in test_quality.py, on the
same log written through the stream.)

Real processes: the gateway (``python -m gateway``) and a stand-in model server
(tests/gateway/upstream_app.py: it answers ``version * sum(row)``) on the monitoring suite's own
Redis; the real ingester moves the gateway's stream into PostgreSQL.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from django.conf import settings
from sklearn import metrics

from accounts.choices import Role
from deployments import backends
from deployments.models import Deployment
from deployments.services import deployment_key_create, route_sync
from gateway.routes import route_remove
from monitoring.services import predictions_ingest
from tests.factories import (
    DeploymentFactory,
    ModelVersionFactory,
    RegisteredModelFactory,
    SlotFactory,
)
from tests.gateway.support import (
    TEST_GATEWAY_ENV,
    UPSTREAM_SCRIPT,
    Proc,
    free_port,
    start_process,
    wait_http,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def served(transactional_db, make_user, monitoring_redis, tmp_path) -> Iterator[dict]:
    backends.route_store.cache_clear()
    procs: list[Proc] = []
    try:
        port = free_port()
        upstream = start_process(
            "upstream",
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port), "--version", "1"],
            port,
            tmp_path,
        )
        procs.append(upstream)
        wait_http(upstream, "/readyz")
        port = free_port()
        gateway = start_process(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "--port",
                str(port),
                "--redis-url",
                settings.REDIS_URL,
            ],
            port,
            tmp_path,
            env={**TEST_GATEWAY_ENV, "MODELYARD_GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1"},
        )
        procs.append(gateway)
        wait_http(gateway, "/readyz")
        operator = make_user(Role.OPERATOR, "olive")
        model = RegisteredModelFactory(name="price-live")
        contract = {"features": [], "output": {"kind": "value", "classes": None}}
        version = ModelVersionFactory(model=model, number=1, created_by=operator, contract=contract)
        deployment = DeploymentFactory(
            name="price-live", model=model, created_by=operator, live_slot="blue"
        )
        SlotFactory(
            deployment=deployment, color="blue", version=version, state="ready", url=upstream.url
        )
        _, key = deployment_key_create(deployment=deployment, name="app", actor=operator)
        route_sync(deployment_id=deployment.pk)
        yield {"gateway": gateway, "deployment": deployment, "key": key}
    finally:
        route_remove(backends.route_store(), "price-live")
        for proc in reversed(procs):
            proc.stop()


def test_labels_for_answers_through_the_gateway_give_sklearns_metrics(
    served, monitoring_redis, api_for, make_user
) -> None:
    gateway, key = served["gateway"], served["key"]
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 50, size=(120, 3)).tolist()
    answers = []
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        for n, row in enumerate(rows):
            headers = {"Authorization": f"Bearer {key}"}
            if n % 10 == 0:
                headers["X-Modelyard-Inference-Id"] = f"client-{n}"
            response = client.post(
                "/d/price-live/predict", json={"instances": [row]}, headers=headers
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["inference_id"] == response.headers["x-modelyard-inference-id"]
            answers.append((body["inference_id"], body["predictions"][0]))
    assert answers[10][0] == "client-10"

    deadline = time.monotonic() + 20
    logged = 0
    while logged < len(rows) and time.monotonic() < deadline:
        logged += predictions_ingest(monitoring_redis, consumer="t").rows
        time.sleep(0.1)
    assert logged == len(rows)

    # Truth for two thirds of them, posted later as CSV.
    truth = {i: p + float(rng.normal(0, 4)) for i, p in answers[:80]}
    csv_text = "id,label\n" + "\n".join(f"{i},{v}" for i, v in truth.items())
    api = api_for(make_user(Role.DATA_SCIENTIST, "dana"))
    posted = api.generic(
        "POST", "/api/v1/deployments/price-live/labels/", csv_text, content_type="text/csv"
    ).json()
    assert (posted["created"], posted["unmatched"], posted["invalid"]) == (80, 0, 0)

    quality = api.get("/api/v1/deployments/price-live/quality/?window=1h").json()
    (version,) = quality["versions"]
    predicted = [p for i, p in answers[:80]]
    assert version["labelled"] == 80 and version["predictions"] == 120
    assert version["metrics"]["mae"]["value"] == pytest.approx(
        metrics.mean_absolute_error(list(truth.values()), predicted)
    )
    assert version["metrics"]["rmse"] == pytest.approx(
        metrics.root_mean_squared_error(list(truth.values()), predicted)
    )
    health = httpx.get(f"{gateway.url}/healthz").json()
    assert health["predictions_logged"] == len(rows)
    assert Deployment.objects.get(name="price-live").live_slot == "blue"
