"""Upload → approve → deploy → predict → roll out v2 → roll back, all over HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from core.models import AuditEvent
from tests.deployments.flows import _approved_version, _headers, _predict, _roll_out, _wait
from tests.models import train_sklearn_joblib

__all__ = ["_approved_version", "_headers", "_predict", "_roll_out", "_wait"]  # old imports

pytestmark = pytest.mark.stack


def test_blue_green_rollout_and_instant_rollback_over_http(live_stack):
    from sklearn.tree import DecisionTreeClassifier

    v1_model = train_sklearn_joblib(seed=0)
    v2_model = train_sklearn_joblib(seed=1, estimator=DecisionTreeClassifier(max_depth=2))
    rows = v1_model.frame.head(30).to_dict(orient="records")
    expected = {
        1: [int(p) for p in v1_model.model.predict(v1_model.frame.head(30))],
        2: [int(p) for p in v2_model.model.predict(v1_model.frame.head(30))],
    }
    assert expected[1] != expected[2], "the two versions must be told apart by their answers"

    base, gateway = live_stack["url"] + "/api/v1", live_stack["gateway"]
    ds, rev = _headers("dana", "data_scientist"), _headers("rory", "reviewer")
    ops = _headers("olive", "operator")
    with httpx.Client(timeout=60) as http:
        assert http.post(f"{base}/models/", headers=ds, json={"name": "churn"}).status_code == 201
        assert _approved_version(http, base, ds, rev, v1_model) == 1
        assert _approved_version(http, base, ds, rev, v2_model) == 2

        created = http.post(
            f"{base}/deployments/",
            headers=ops,
            json={
                "name": "churn-prod",
                "model": "churn",
                "environment": "production",
                "bake_seconds": 900,
            },
        )
        assert created.status_code == 201, created.text
        key = http.post(
            f"{base}/deployments/churn-prod/keys/", headers=ops, json={"name": "app"}
        ).json()["key"]

        first = _roll_out(http, base, ops, 1, live_stack)
        assert first["target_slot"] == "blue"
        switched = [s["message"] for s in first["steps"] if "traffic switched" in s["message"]]
        # A first rollout has no previous slot: its step log must not promise a warm one.
        assert switched and "first version" in switched[0], first["steps"]
        assert not any("kept warm" in message for message in switched), first["steps"]
        assert _predict(http, gateway, key, rows) == (1, expected[1])

        second = _roll_out(http, base, ops, 2, live_stack)
        assert second["target_slot"] == "green" and second["previous_version"] == 1
        assert any("previous slot kept warm" in s["message"] for s in second["steps"])
        assert _predict(http, gateway, key, rows) == (2, expected[2])

        detail = http.get(f"{base}/deployments/churn-prod/", headers=ops).json()
        assert detail["live_version"] == 2 and detail["live_slot"] == "green"
        assert {s["color"]: s["state"] for s in detail["slots"]} == {
            "blue": "ready",
            "green": "ready",
        }  # v1 stays warm while v2 bakes

        flipped_at = time.monotonic()
        rollback = http.post(
            f"{base}/deployments/churn-prod/rollback/", headers=ops, json={"reason": "v2 looks off"}
        )
        assert rollback.status_code == 202, rollback.text
        assert rollback.json()["kind"] == "rollback" and rollback.json()["version"] == 1
        while _predict(http, gateway, key, rows)[0] != 1:
            assert time.monotonic() - flipped_at < 5, "rollback not visible within 5 s"
        assert _predict(http, gateway, key, rows) == (1, expected[1])

        wrong_key = http.post(
            f"{gateway}/d/churn-prod/predict",
            headers={"Authorization": "Bearer nope"},
            json={"instances": rows},
        )
        assert wrong_key.status_code == 401

    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"deployment.created", "rollout.state_changed", "deployment.rollback"} <= actions
