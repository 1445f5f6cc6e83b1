"""Shared HTTP flows for tests that drive a live stack: users, approved versions, rollouts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from accounts.services import token_create
from tests.factories import UserFactory
from tests.gateway.support import wait_until
from tests.models import TrainedModel, train_sklearn_joblib


def _headers(username: str, role: str) -> dict[str, str]:
    user = UserFactory(username=username, role=role)
    return {"Authorization": f"Token {token_create(user=user, name='t').key}"}


def _wait(http, url, headers, done, timeout=300, what=""):
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(url, headers=headers).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def _approved_version(http, base, ds, rev, trained) -> int:
    uploaded = http.post(
        f"{base}/models/churn/versions/",
        headers=ds,
        data={"framework": "sklearn"},
        files={
            "file": ("m.joblib", trained.artifact),
            "reference_data": ("r.csv", trained.reference_csv),
        },
    )
    assert uploaded.status_code == 201, uploaded.text
    number = uploaded.json()["number"]
    url = f"{base}/models/churn/versions/{number}/"
    version = _wait(http, url, ds, lambda b: b["state"] in ("validated", "invalid"), 120)
    assert version["state"] == "validated", version
    assert http.post(f"{url}submit/", headers=ds, json={}).status_code == 200
    assert http.post(f"{url}reviews/", headers=rev, json={"decision": "approve"}).status_code == 201
    return number


def _roll_out(http, base, ops, version, stack):
    started = http.post(
        f"{base}/deployments/churn-prod/rollouts/", headers=ops, json={"version": version}
    )
    assert started.status_code == 202, started.text
    url = f"{base}/deployments/churn-prod/rollouts/{started.json()['id']}/"
    rollout = _wait(http, url, ops, lambda b: b["state"] in ("baking", "live", "failed"), 420)
    assert rollout["state"] in ("baking", "live"), (
        rollout,
        stack["worker_log"].read_text()[-4000:],
    )
    return rollout


def _predict(http, gateway, key, rows):
    response = http.post(
        f"{gateway}/d/churn-prod/predict",
        headers={"Authorization": f"Bearer {key}"},
        json={"instances": rows},
    )
    assert response.status_code == 200, response.text
    return int(response.headers["X-Modelyard-Version"]), response.json()["predictions"]


def _gateway_settles_on(http, gateway, key, rows, version, within=3.0, then=20):
    """Assert the gateway answers ``version`` within ``within`` s, and then only ``version``.

    A route's announcement reaches the gateway asynchronously (pub/sub, then its own read of
    the route): a prediction sent the instant a route was published -- or put back, after a
    failed rollback -- may still meet the one before. What must hold is that it converges
    quickly and stays converged.
    """
    wait_until(
        lambda: _predict(http, gateway, key, rows)[0] == version,
        deadline_s=within,
        what=f"the gateway to answer v{version}",
    )
    answers = [_predict(http, gateway, key, rows)[0] for _ in range(then)]
    assert answers == [version] * then, answers


@dataclass
class ChurnDeployment:
    base: str
    ops: dict[str, str]
    key: str
    rows: list[dict]
    models: list[TrainedModel]


def churn_deployment(
    http: httpx.Client,
    stack,
    *,
    versions: int = 2,
    rows: int = 5,
    bake_seconds: int = 900,
    more: tuple[TrainedModel, ...] = (),
) -> ChurnDeployment:
    """Model `churn` with ``versions`` approved versions that answer differently (v1 a
    logistic regression, v2 a shallow tree; then ``more``), deployment `churn-prod` and a
    gateway key."""
    from sklearn.tree import DecisionTreeClassifier

    base = stack.url + "/api/v1"
    ds, rev = _headers("dana", "data_scientist"), _headers("rory", "reviewer")
    ops = _headers("olive", "operator")
    models = [
        train_sklearn_joblib(seed=0),
        train_sklearn_joblib(seed=1, estimator=DecisionTreeClassifier(max_depth=2)),
    ][:versions] + list(more)
    assert http.post(f"{base}/models/", headers=ds, json={"name": "churn"}).status_code == 201
    for trained in models:
        _approved_version(http, base, ds, rev, trained)
    created = http.post(
        f"{base}/deployments/",
        headers=ops,
        json={
            "name": "churn-prod",
            "model": "churn",
            "environment": "production",
            "bake_seconds": bake_seconds,
        },
    )
    assert created.status_code == 201, created.text
    key = http.post(f"{base}/deployments/churn-prod/keys/", headers=ops, json={}).json()["key"]
    return ChurnDeployment(
        base=base,
        ops=ops,
        key=key,
        models=models,
        rows=models[0].frame.head(rows).to_dict(orient="records"),
    )
