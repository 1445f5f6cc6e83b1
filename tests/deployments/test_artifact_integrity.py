"""Approvals are bound to the artifact's sha256: a swapped stored file is never built or served."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from django.core.files.storage import default_storage

from deployments.models import Build, DeploymentEvent
from registry.models import ModelVersion
from registry.services.artifacts import file_sha256
from tests.deployments.flows import _predict, _roll_out, _wait, churn_deployment
from tests.models import train_sklearn_joblib

pytestmark = pytest.mark.stack


def _swap_stored_file(number: int, replacement: bytes) -> tuple[str, str]:
    """Overwrite version ``number``'s stored artifact in place (as a storage-level attacker
    would); returns (approved sha256, new sha256)."""
    version = ModelVersion.objects.get(model__name="churn", number=number)
    path = Path(default_storage.path(version.artifact_path))
    path.write_bytes(replacement)
    return version.artifact_sha256, file_sha256(path)


def _failed_rollout(http, base, ops, deployment: str, number: int):
    started = http.post(
        f"{base}/deployments/{deployment}/rollouts/", headers=ops, json={"version": number}
    )
    assert started.status_code == 202, started.text
    url = f"{base}/deployments/{deployment}/rollouts/{started.json()['id']}/"
    return _wait(http, url, ops, lambda b: b["state"] in ("baking", "live", "failed"), 300)


def test_build_and_slot_start_refuse_an_artifact_that_is_not_the_approved_file(live_stack):
    other = train_sklearn_joblib(seed=7).artifact
    with httpx.Client(timeout=60) as http:
        churn = churn_deployment(http, live_stack, versions=2)
        base, ops = churn.base, churn.ops
        _roll_out(http, base, ops, 1, live_stack)
        assert _predict(http, live_stack["gateway"], churn.key, churn.rows)[0] == 1

        # v2 swapped before its first build: the build refuses, nothing is built from it.
        approved, swapped = _swap_stored_file(2, other)
        assert approved != swapped
        rollout = _failed_rollout(http, base, ops, "churn-prod", 2)
        assert rollout["state"] == "failed", rollout
        assert approved in rollout["error"] and swapped in rollout["error"]
        build = Build.objects.get(version__number=2)
        assert build.state == "failed" and not build.bento_tag
        event = DeploymentEvent.objects.get(deployment__name="churn-prod", kind="artifact_mismatch")
        assert approved in event.message and swapped in event.message
        # The live version keeps answering.
        assert _predict(http, live_stack["gateway"], churn.key, churn.rows)[0] == 1

        # v1 swapped after its Bento was built: starting a slot for it re-hashes and refuses.
        approved, swapped = _swap_stored_file(1, other)
        created = http.post(
            f"{base}/deployments/",
            headers=ops,
            json={"name": "churn-b", "model": "churn", "environment": "production"},
        )
        assert created.status_code == 201, created.text
        rollout = _failed_rollout(http, base, ops, "churn-b", 1)
        assert rollout["state"] == "failed", rollout
        assert approved in rollout["error"] and swapped in rollout["error"]
        assert "not started" in rollout["error"]
        event = DeploymentEvent.objects.get(deployment__name="churn-b", kind="artifact_mismatch")
        assert approved in event.message and swapped in event.message
        detail = http.get(f"{base}/deployments/churn-b/", headers=ops).json()
        assert detail["slots"] and not any(slot["url"] for slot in detail["slots"]), detail
        assert detail["live_version"] is None
        # churn-prod still serves v1 from the Bento it was approved and built as.
        assert _predict(http, live_stack["gateway"], churn.key, churn.rows)[0] == 1
