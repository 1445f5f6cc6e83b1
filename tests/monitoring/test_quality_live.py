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
from tests.deployments.conftest import fake_backend  # noqa: F401 (fixture)
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


@pytest.fixture
def baking(served, fake_backend) -> dict:  # noqa: F811
    """price-live serving v2 since a rollout switched to it 10 minutes ago and bakes, v1 still
    warm on blue: both slots are the in-memory runtime's real HTTP servers (v1 answers 5.0,
    v2 10.0), so the rollback's warm check and route flip run for real. v2's baseline is its
    quality on labelled reference rows as validation stores it (core.quality_metrics on its
    own answers, the truth within 0.5 of them)."""
    from datetime import timedelta

    from django.utils import timezone

    from core.quality_metrics import quality_metrics
    from deployments.choices import RolloutKind, RolloutState
    from deployments.models import Rollout, Slot

    deployment = served["deployment"]
    fake_backend.answers = {
        "price:v1": (200, {"predictions": [5.0]}),
        "price:v2": (200, {"predictions": [10.0]}),
    }
    blue = fake_backend.slot_start(slot_key="price-live.blue", bento_tag="price:v1")
    green = fake_backend.slot_start(slot_key="price-live.green", bento_tag="price:v2")
    v1 = deployment.model.versions.get(number=1)
    rng = np.random.default_rng(8)
    reference = quality_metrics(
        truth=[str(10.0 + rng.uniform(-0.5, 0.5)) for _ in range(200)],
        predictions=["10.0"] * 200,
        probabilities=None,
        task="regression",
        classes=None,
    )
    v2 = ModelVersionFactory(
        model=deployment.model,
        number=2,
        contract=v1.contract,
        baseline_quality={"label_column": "price", "labelled_rows": 200, **reference},
    )
    Slot.objects.filter(deployment=deployment, color="blue").update(
        url=blue.url, bento_tag="price:v1"
    )
    SlotFactory(
        deployment=deployment,
        color="green",
        version=v2,
        state="ready",
        url=green.url,
        bento_tag="price:v2",
    )
    switched = timezone.now() - timedelta(minutes=10)
    Rollout.objects.create(
        deployment=deployment,
        version=v2,
        previous_version=v1,
        kind=RolloutKind.ROLLOUT,
        target_slot="green",
        state=RolloutState.BAKING,
        bake_until=switched + timedelta(seconds=3600),
        steps=[{"at": switched.isoformat(), "state": "switching", "message": "switched"}],
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        live_slot="green",
        bake_seconds=3600,
        guard_policy={"max_mae_increase": 2.0, "min_labels": 50},
    )
    route_sync(deployment_id=deployment.pk)
    return {**served, "v2": v2}


def _answers(gateway, key: str, rows: list) -> list[tuple[str, float, int]]:
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        out = []
        for row in rows:
            response = client.post(
                "/d/price-live/predict",
                json={"instances": [row]},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            version = int(response.headers["x-modelyard-version"])
            out.append((body["inference_id"], body["predictions"][0], version))
    return out


def test_labels_that_turn_bad_roll_the_version_back_and_request_a_retrain(
    baking, monitoring_redis, api_for, make_user, receiver_factory
) -> None:
    """Live: v2 answers through the gateway, the truth arrives later over the API and says v2
    is off by far more than its reference baseline allows; the MAE guard rolls back to v1 (the
    gateway answers from v1 at once) and a signed retrain.requested webhook names v2."""
    from deployments.models import Deployment as D
    from monitoring.choices import AlertKind, GuardRule
    from monitoring.services import alerts_detect, guards_check_deployment
    from monitoring.services.webhooks import webhook_endpoint_create
    from monitoring.tasks import webhooks_deliver_task

    gateway, key = baking["gateway"], baking["key"]
    operator = make_user(Role.OPERATOR, "otto")
    receiver = receiver_factory()
    webhook_endpoint_create(
        name="trainer", url=receiver.url, actor=operator, kinds=[AlertKind.RETRAIN_REQUESTED]
    )
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 50, size=(100, 3)).tolist()
    answers = _answers(gateway, key, rows)
    assert {version for _, _, version in answers} == {2}
    deadline = time.monotonic() + 20
    logged = 0
    while logged < len(rows) and time.monotonic() < deadline:
        logged += predictions_ingest(monitoring_redis, consumer="t").rows
        time.sleep(0.1)
    assert logged == len(rows)
    # The world moved: the truth is what v1 answers (half of v2's), labels days late.
    labels = [{"id": i, "label": p / 2} for i, p, _ in answers]
    api = api_for(make_user(Role.DATA_SCIENTIST, "dana"))
    posted = api.post(
        "/api/v1/deployments/price-live/labels/", {"labels": labels}, format="json"
    ).json()
    assert posted["created"] == len(labels)
    truth = [p / 2 for _, p, _ in answers]
    predicted = [p for _, p, _ in answers]

    breach = guards_check_deployment(deployment=D.objects.get(name="price-live"))

    assert breach is not None and breach.rules == [GuardRule.MAE], breach and breach.evidence
    figures = breach.evidence["mae"]
    assert figures["value"] == pytest.approx(metrics.mean_absolute_error(truth, predicted))
    assert figures["baseline_source"] == "reference labels" and figures["baseline"] < 1.0
    assert breach.rollback is not None and breach.rollback.version.number == 1
    assert D.objects.get(name="price-live").live_slot == "blue"
    deadline = time.monotonic() + 10
    while _answers(gateway, key, [[1, 2, 3]])[0][2] != 1:  # the route moved to v1
        assert time.monotonic() < deadline, "the gateway still answers from v2"
        time.sleep(0.2)

    alerts_detect()
    assert webhooks_deliver_task.apply().get() == 1
    [(headers, body)] = receiver.requests
    assert headers["X-Modelyard-Event"] == "retrain.requested"
    payload = httpx.Response(200, content=body).json()["payload"]
    assert (payload["deployment"], payload["version"], payload["metric"]) == (
        "price-live",
        2,
        "mae",
    )
    assert payload["value"] == pytest.approx(figures["value"])
