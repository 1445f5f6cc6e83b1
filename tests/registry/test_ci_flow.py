"""The CI pipeline's whole flow over plain HTTP against a running server and worker."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from accounts.services import token_create
from tests.factories import UserFactory

pytestmark = pytest.mark.stack


def _token(username: str, role: str) -> dict[str, str]:
    user = UserFactory(username=username, role=role)
    return {"Authorization": f"Token {token_create(user=user, name='ci').key}"}


def test_ci_pipeline_flow_over_http(live_stack, sklearn_model):
    base = live_stack["url"] + "/api/v1"
    ci, rev = _token("ci-bot", "data_scientist"), _token("reviewer-1", "reviewer")
    release = _token("release-bot", "operator")
    with httpx.Client(timeout=30) as http:
        created = http.post(
            f"{base}/models/",
            headers=ci,
            json={"name": "fraud", "description": "card fraud", "tags": ["ci"]},
        )
        assert created.status_code == 201, created.text

        metadata = {
            "params": {"C": 1.0},
            "metrics": {"auc": 0.93},
            "datasets": [{"uri": "s3://data/fraud/train.parquet", "content_hash": "sha256:feed"}],
            "code_repo": "https://git.example.com/fraud",
            "code_commit": "deadbeef",
            "training_run_id": "ci-run-1",
        }
        uploaded = http.post(
            f"{base}/models/fraud/versions/",
            headers=ci,
            data={"framework": "sklearn", "metadata": json.dumps(metadata)},
            files={
                "file": ("model.joblib", sklearn_model.artifact),
                "reference_data": ("reference.csv", sklearn_model.reference_csv),
            },
        )
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["state"] in ("uploaded", "validating", "validated")

        deadline = time.monotonic() + 90
        while True:  # the worker validates asynchronously; CI polls
            version = http.get(f"{base}/models/fraud/versions/1/", headers=ci).json()
            if version["state"] in ("validated", "invalid") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert version["state"] == "validated", (
            version,
            live_stack["worker_log"].read_text()[-3000:],
        )
        assert version["validation_report"]["load"]["ok"] is True

        submitted = http.post(f"{base}/models/fraud/versions/1/submit/", headers=ci, json={})
        assert submitted.status_code == 200 and submitted.json()["state"] == "in_review"

        # The uploader may not approve: a reviewer token of the uploader is refused too.
        self_review = http.post(
            f"{base}/models/fraud/versions/1/reviews/", headers=ci, json={"decision": "approve"}
        )
        assert self_review.status_code == 403
        assert (
            "permission" in self_review.json()["error"]["message"]
            or "role" in self_review.json()["error"]["message"]
        )

        approved = http.post(
            f"{base}/models/fraud/versions/1/reviews/",
            headers=rev,
            json={"decision": "approve", "comment": "metrics ok"},
        )
        assert approved.status_code == 201, approved.text
        # Promoting is a release: the data scientist's token may not, an operator's may.
        refused = http.put(
            f"{base}/models/fraud/aliases/champion/", headers=ci, json={"version": 1}
        )
        assert refused.status_code == 403, refused.text
        alias = http.put(
            f"{base}/models/fraud/aliases/champion/", headers=release, json={"version": 1}
        )
        assert alias.status_code == 200 and alias.json()["protected"] is True

        audit = http.get(f"{base}/audit/", headers=ci, params={"page_size": 100}).json()
        actions = [(e["action"], (e["after"] or {}).get("state")) for e in audit["results"]]
        for expected in [
            ("model.created", None),
            ("version.uploaded", "uploaded"),
            ("version.state_changed", "validating"),
            ("version.state_changed", "validated"),
            ("version.state_changed", "in_review"),
            ("version.reviewed", None),
            ("version.state_changed", "approved"),
            ("alias.set", None),
        ]:
            assert any(
                a == expected[0] and (expected[1] is None or s == expected[1]) for a, s in actions
            ), (expected, actions)
        vias = {
            e["via"]
            for e in audit["results"]
            if e["actor_name"] == "ci-bot" and e["action"] != "token.created"
        }
        assert vias == {"api:ci"}


def test_self_approval_by_a_reviewer_uploader_is_refused_over_http(live_stack, sklearn_model):
    base = live_stack["url"] + "/api/v1"
    admin = _token("boss", "admin")
    with httpx.Client(timeout=30) as http:
        http.post(f"{base}/models/", headers=admin, json={"name": "selfie"})
        http.post(
            f"{base}/models/selfie/versions/",
            headers=admin,
            data={"framework": "sklearn"},
            files={
                "file": ("m.joblib", sklearn_model.artifact),
                "reference_data": ("r.csv", sklearn_model.reference_csv),
            },
        )
        deadline = time.monotonic() + 90
        while (
            http.get(f"{base}/models/selfie/versions/1/", headers=admin).json()["state"]
            != "validated"
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        http.post(f"{base}/models/selfie/versions/1/submit/", headers=admin, json={})
        response = http.post(
            f"{base}/models/selfie/versions/1/reviews/", headers=admin, json={"decision": "approve"}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "self_review"
        assert "you uploaded this version" in response.json()["error"]["message"].lower()
