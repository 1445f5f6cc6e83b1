"""The `modelyard` command against the live stack (web, worker, gateway, real builds).

Each step runs the installed console script in a subprocess, configured only by
MODELYARD_URL and MODELYARD_TOKEN, and checks its exit code, stdout and stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.deployments.flows import _headers, churn_deployment
from tests.models import train_sklearn_joblib

pytestmark = pytest.mark.stack

MODELYARD = Path(sys.executable).with_name("modelyard")


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Token ")


def _cli(stack, token: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MODELYARD_URL": stack.url,
        "MODELYARD_TOKEN": token,
    }
    done = subprocess.run(
        [str(MODELYARD), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_cli_push_wait_submit_exit_codes(live_stack, sklearn_model, tmp_path):
    ds, rev = _headers("dana", "data_scientist"), _headers("rory", "reviewer")
    artifact, reference = tmp_path / "model.joblib", tmp_path / "reference.csv"
    artifact.write_bytes(sklearn_model.artifact)
    reference.write_bytes(sklearn_model.reference_csv)
    token = _token(ds)

    push = ["push", str(artifact), "--model", "fraud", "--reference", str(reference), "--json"]
    first = _cli(live_stack, token, *push, "--create-model", "--metadata", '{"tags": ["ci"]}')
    assert first.returncode == 0, first.stderr
    pushed = json.loads(first.stdout)
    assert (pushed["ref"], pushed["created"]) == ("fraud:1", True)
    again = _cli(live_stack, token, *push)
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["ref"], json.loads(again.stdout)["created"]) == (
        "fraud:1",
        False,
    )
    listed = httpx.get(f"{live_stack.url}/api/v1/models/fraud/versions/", headers=ds).json()
    assert listed["count"] == 1

    validated = _cli(live_stack, token, "wait", "fraud:1", "--for", "validated", "--timeout", "120")
    assert validated.returncode == 0, (
        validated.stderr,
        live_stack["worker_log"].read_text()[-3000:],
    )
    assert "fraud:1 is validated" in validated.stdout
    assert "fraud:1 is" in validated.stderr  # progress while waiting goes to stderr

    timeout = _cli(live_stack, token, "wait", "fraud:1", "--for", "approved", "--timeout", "2")
    assert timeout.returncode == 3, timeout.stderr
    assert "still fraud:1 is validated after 2 s" in timeout.stderr

    submitted = _cli(live_stack, token, "submit", "fraud:1", "--comment", "ship it")
    assert submitted.returncode == 0 and "in_review" in submitted.stdout, submitted.stderr
    rejected = httpx.post(
        f"{live_stack.url}/api/v1/models/fraud/versions/1/reviews/",
        headers=rev,
        json={"decision": "reject", "comment": "recall too low"},
    )
    assert rejected.status_code == 201, rejected.text
    refused = _cli(live_stack, token, "wait", "fraud:1", "--for", "approved", "--timeout", "60")
    assert refused.returncode == 2, refused.stderr
    assert "fraud:1 was rejected: recall too low" in refused.stderr

    # A model that does not fit its reference sample fails validation: exit 2, with why.
    other, bad_reference = tmp_path / "other.joblib", tmp_path / "bad.csv"
    other.write_bytes(train_sklearn_joblib(seed=3).artifact)
    bad_reference.write_bytes(b"colour,size\nred,1\nblue,2\n")
    pushed_bad = _cli(
        live_stack, token, "push", str(other), "--model", "fraud", "--reference", str(bad_reference)
    )
    assert pushed_bad.returncode == 0 and "fraud:2" in pushed_bad.stdout, pushed_bad.stderr
    invalid = _cli(live_stack, token, "wait", "2", "--model", "fraud", "--for", "validated")
    assert invalid.returncode == 2, invalid.stderr
    assert invalid.stderr.strip().splitlines()[-1].startswith("modelyard: fraud:2 is invalid: ")

    # Auth and permission: exit 4 with the server's message; other errors: exit 1.
    bad_token = _cli(live_stack, "not-a-token", "wait", "fraud:1", "--for", "validated")
    assert bad_token.returncode == 4, bad_token.stderr
    forbidden = _cli(live_stack, token, "promote", "fraud:1", "--alias", "champion")
    assert forbidden.returncode == 4
    assert "protected" in forbidden.stderr and forbidden.stderr.startswith("modelyard: ")
    missing = _cli(live_stack, token, "wait", "nosuch:1", "--for", "validated", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    usage = _cli(live_stack, token, "wait", "fraud", "--for", "validated")
    assert usage.returncode == 1 and "MODEL:NUMBER" in usage.stderr


def test_cli_deploy_by_alias_follow_and_rollback(live_stack):
    with httpx.Client(timeout=60) as http:
        churn = churn_deployment(http, live_stack, versions=2)
    ops = _token(churn.ops)

    promoted = _cli(live_stack, ops, "promote", "churn:1", "--alias", "champion")
    assert promoted.returncode == 0, promoted.stderr
    deployed = _cli(live_stack, ops, "deploy", "churn-prod", "--alias", "champion", "--json")
    assert deployed.returncode == 0, (deployed.stderr, live_stack["worker_log"].read_text()[-4000:])
    rollout = json.loads(deployed.stdout)
    assert (rollout["version"], rollout["alias"], rollout["wait"]["outcome"]) == (
        1,
        "champion",
        "reached",
    )
    assert "(alias champion)" in deployed.stderr and "[building]" in deployed.stderr

    follow = _cli(live_stack, ops, "follow", "churn-prod", "--alias", "champion")
    assert follow.returncode == 0 and "follows champion" in follow.stdout, follow.stderr
    assert _cli(live_stack, ops, "promote", "churn:2", "--alias", "champion").returncode == 0
    live = _cli(live_stack, ops, "wait", "churn:2", "--for", "live", "--deployment", "churn-prod")
    assert live.returncode == 0, (live.stderr, live_stack["worker_log"].read_text()[-4000:])

    rolled_back = _cli(live_stack, ops, "rollback", "churn-prod", "--reason", "ci test")
    assert rolled_back.returncode == 0, rolled_back.stderr
    status = _cli(live_stack, ops, "status", "churn-prod", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["live_version"] == 1
    listed = _cli(live_stack, ops, "status")
    assert "churn-prod" in listed.stdout and "live v1" in listed.stdout


def test_cli_batch_run_waits_and_downloads_the_models_predictions(
    live_stack, sklearn_model, tmp_path
):
    import numpy as np
    import pandas as pd

    from tests.batch.conftest import input_frame

    ds, rev = _headers("dana", "data_scientist"), _headers("rory", "reviewer")
    token = _token(ds)
    artifact, reference = tmp_path / "model.joblib", tmp_path / "reference.csv"
    artifact.write_bytes(sklearn_model.artifact)
    reference.write_bytes(sklearn_model.reference_csv)
    pushed = _cli(
        live_stack, token, "push", str(artifact), "--model", "scoring", "--create-model",
        "--reference", str(reference),
    )  # fmt: skip
    assert pushed.returncode == 0 and "scoring:1" in pushed.stdout, pushed.stderr
    validated = _cli(live_stack, token, "wait", "scoring:1", "--for", "validated")
    assert validated.returncode == 0, validated.stderr
    assert _cli(live_stack, token, "submit", "scoring:1").returncode == 0
    approved = httpx.post(
        f"{live_stack.url}/api/v1/models/scoring/versions/1/reviews/",
        headers=rev,
        json={"decision": "approve"},
    )
    assert approved.status_code == 201, approved.text

    rows = 3_000
    frame = input_frame(rows, seed=5)  # row_id + the model's four features
    frame.to_csv(tmp_path / "rows.csv", index=False)  # floats as repr: they read back exact
    output = tmp_path / "scored.parquet"
    # No Bento exists for scoring:1 yet: the job waits while the worker builds it.
    ran = _cli(
        live_stack, token, "batch", "run", "--model", "scoring", "--version", "1",
        "--file", str(tmp_path / "rows.csv"), "--id-column", "row_id", "--probabilities",
        "--wait", "--download", str(output), "--json", "--timeout", "600",
    )  # fmt: skip
    assert ran.returncode == 0, (ran.stderr, live_stack["worker_log"].read_text()[-4000:])
    job = json.loads(ran.stdout)
    assert (job["state"], job["version"], job["output_rows"]) == ("succeeded", 1, rows)
    assert job["wait"]["outcome"] == "reached"
    assert f"batch job {job['id']} queued" in ran.stderr
    assert f"bytes to {output}" in ran.stderr
    assert sorted(p.name for p in tmp_path.glob("scored*")) == ["scored.parquet"]  # no .part

    scored = pd.read_parquet(output)
    features = frame.drop(columns="row_id")
    assert len(scored) == rows
    assert np.array_equal(scored["row_id"].to_numpy(), frame["row_id"].to_numpy())
    # Row by row, what the model itself predicts for that row.
    assert np.array_equal(scored["prediction"].to_numpy(), sklearn_model.model.predict(features))
    probabilities = sklearn_model.model.predict_proba(features)
    assert np.allclose(scored[["probability_0", "probability_1"]].to_numpy(), probabilities)
