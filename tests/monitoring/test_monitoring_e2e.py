"""Shifted traffic through the real gateway: drift flagged, the guard rolls back, all over HTTP.

upload → approve → deploy v1 → roll out v2 (v1 stays warm) → send traffic whose ``age`` is
moved by two standard deviations → the drift computed on the worker flags ``age`` only → the
guard (on the worker) rolls back to v1, with the figures in the audit log.
"""

from __future__ import annotations

import time
import uuid

import httpx
import numpy as np
import pytest

from core.models import AuditEvent
from deployments.models import Deployment
from gateway.sampling import samples_key
from monitoring.models import SlotResourceSample
from monitoring.services import (
    alerts_detect,
    guards_check_deployment,
    metrics_rollup,
    resources_sample,
)
from monitoring.services.rollups import metrics_redis
from monitoring.tasks import guards_check_task
from tests.deployments.test_rollout_e2e import _headers, _wait
from tests.models import FEATURES, train_sklearn_joblib, training_frame

pytestmark = pytest.mark.stack

# Names of our own: the test database is shared with other suites, and a killed run leaves
# its rows behind.
RUN = uuid.uuid4().hex[:6]
MODEL, DEPLOYMENT = f"drifty-{RUN}", f"drifty-{RUN}-prod"


def _approved_version(http, base, ds, rev, trained) -> int:
    uploaded = http.post(
        f"{base}/models/{MODEL}/versions/",
        headers=ds,
        data={"framework": "sklearn"},
        files={
            "file": ("m.joblib", trained.artifact),
            "reference_data": ("r.csv", trained.reference_csv),
        },
    )
    assert uploaded.status_code == 201, uploaded.text
    url = f"{base}/models/{MODEL}/versions/{uploaded.json()['number']}/"
    version = _wait(http, url, ds, lambda b: b["state"] in ("validated", "invalid"), 120)
    assert version["state"] == "validated", version
    assert http.post(f"{url}submit/", headers=ds, json={}).status_code == 200
    assert http.post(f"{url}reviews/", headers=rev, json={"decision": "approve"}).status_code == 201
    return version["number"]


def _roll_out(http, base, ops, version, stack):
    started = http.post(
        f"{base}/deployments/{DEPLOYMENT}/rollouts/", headers=ops, json={"version": version}
    )
    assert started.status_code == 202, started.text
    url = f"{base}/deployments/{DEPLOYMENT}/rollouts/{started.json()['id']}/"
    rollout = _wait(http, url, ops, lambda b: b["state"] in ("baking", "live", "failed"), 420)
    assert rollout["state"] in ("baking", "live"), (
        rollout,
        stack["worker_log"].read_text()[-4000:],
    )


def _predict(http, gateway, key, rows) -> int:
    response = http.post(
        f"{gateway}/d/{DEPLOYMENT}/predict",
        headers={"Authorization": f"Bearer {key}"},
        json={"instances": rows},
    )
    assert response.status_code == 200, response.text
    return int(response.headers["X-Modelyard-Version"])


@pytest.mark.stack_private_redis  # other suites run live stacks on the shared Redis too
@pytest.mark.stack_env(
    MODELYARD_GATEWAY_SAMPLE_RATE="1.0",
    MODELYARD_GATEWAY_SAMPLE_MAX_PER_S="0",
    MODELYARD_GATEWAY_SAMPLE_FLUSH_INTERVAL_S="0.2",
    MODELYARD_GATEWAY_METRICS_FLUSH_INTERVAL_S="0.2",
)
def test_shifted_feature_is_flagged_and_the_drift_guard_rolls_back(live_stack):
    from sklearn.tree import DecisionTreeClassifier

    v1 = train_sklearn_joblib(seed=0)
    v2 = train_sklearn_joblib(seed=1, estimator=DecisionTreeClassifier(max_depth=2))
    reference = v2.frame.head(200)  # what the upload's reference_csv holds
    live, _ = training_frame(n=3000, seed=7)
    live["age"] = live["age"] + 2 * reference["age"].std()  # the mean moved by 2 sd

    base, gateway = live_stack["url"] + "/api/v1", live_stack["gateway"]
    ds, rev = _headers(f"dana-{RUN}", "data_scientist"), _headers(f"rory-{RUN}", "reviewer")
    ops, viewer = _headers(f"olive-{RUN}", "operator"), _headers(f"vic-{RUN}", "viewer")
    with httpx.Client(timeout=60) as http:
        assert http.post(f"{base}/models/", headers=ds, json={"name": MODEL}).status_code == 201
        assert _approved_version(http, base, ds, rev, v1) == 1
        assert _approved_version(http, base, ds, rev, v2) == 2
        created = http.post(
            f"{base}/deployments/",
            headers=ops,
            json={
                "name": DEPLOYMENT,
                "model": MODEL,
                "environment": "production",
                "bake_seconds": 900,
                "guard_policy": {"drift": "drift", "max_error_rate": 0.5},
            },
        )
        assert created.status_code == 201, created.text
        key = http.post(
            f"{base}/deployments/{DEPLOYMENT}/keys/", headers=ops, json={"name": "app"}
        ).json()["key"]
        _roll_out(http, base, ops, 1, live_stack)
        _roll_out(http, base, ops, 2, live_stack)
        assert resources_sample()  # both slots measured before the traffic

        records = live[FEATURES].to_dict(orient="records")
        for offset in range(0, len(records), 100):
            assert _predict(http, gateway, key, records[offset : offset + 100]) == 2
        redis = metrics_redis()
        deadline = time.monotonic() + 10
        while redis.xlen(samples_key(DEPLOYMENT)) < 30:
            assert time.monotonic() < deadline, "the gateway never wrote its samples"
            time.sleep(0.1)
        time.sleep(0.5)  # the last metrics flush (every 0.2 s)
        metrics_rollup()
        assert resources_sample()

        # Drift on demand, computed by the worker; the metrics API shows it per feature.
        asked = http.post(f"{base}/deployments/{DEPLOYMENT}/drift/", headers=ops, json={})
        assert asked.status_code == 202, asked.text
        metrics = _wait(
            http,
            f"{base}/deployments/{DEPLOYMENT}/metrics/?window=1h",
            viewer,
            lambda b: any(v["drift"] for v in b["versions"] if v["version"] == 2),
            timeout=120,
        )
        [v2_metrics] = [v for v in metrics["versions"] if v["version"] == 2]
        drift = v2_metrics["drift"]
        assert {name: f["status"] for name, f in drift["features"].items()} == {
            "age": "drift",
            "income": "ok",
            "visits": "ok",
            "score": "ok",
        }, drift
        assert drift["live_rows"] == 3000 and drift["status"] == "drift"
        assert drift["features"]["age"]["psi"] > 0.25 and drift["features"]["age"]["ks"] > 0.5
        assert drift["prediction"]["kind"] == "categorical"  # the labels' distribution
        assert v2_metrics["requests"] == 30 and v2_metrics["rows"] == 3000
        assert v2_metrics["latency_ms"]["p50"] > 0
        cost = v2_metrics["cost"]
        assert cost["predictions"] == 3000 and cost["cpu_seconds"] > 0
        assert cost["cost_per_prediction"] == pytest.approx(cost["cost"] / 3000)

        # The guard, on the worker, sees the drift while v2 bakes and rolls back to v1. (Sent
        # with a longer life than the periodic message's 15 s, for a loaded machine; watched
        # through the API rather than the result backend.)
        guards_check_task.apply_async(expires=300)
        breaches = _wait(
            http,
            f"{base}/deployments/{DEPLOYMENT}/guard-breaches/",
            viewer,
            lambda b: len(b) > 0,
            timeout=120,
        )
        assert _predict(http, gateway, key, records[:5]) == 1
        deployment = Deployment.objects.get(name=DEPLOYMENT)
        assert guards_check_deployment(deployment=deployment) is None  # nothing left to undo
        [breach] = breaches
        assert breach["rules"] == ["drift"]
        assert breach["action"] == "rolled_back"

    audit = AuditEvent.objects.get(action="deployment.rollback", object_repr__contains=DEPLOYMENT)
    assert audit.actor_id is None and audit.reason == "guard breached: drift on v2"
    evidence = audit.after["evidence"]
    assert audit.before == {"version": 2} and audit.after["version"] == 1
    assert evidence["rules"] == ["drift"] and evidence["version"] == 2
    assert set(evidence["drift"]["features"]) == {"age"}
    age = evidence["drift"]["features"]["age"]
    assert age["status"] == "drift" and age["psi"] > 0.25 and age["live_rows"] == 3000
    assert np.isfinite(age["ks"]) and age["ks_pvalue"] < 1e-6
    assert SlotResourceSample.objects.filter(version=2).count() >= 2

    kinds = {alert.kind for alert in alerts_detect()}
    assert {"rollback", "guard.breach", "drift.detected"} <= kinds
