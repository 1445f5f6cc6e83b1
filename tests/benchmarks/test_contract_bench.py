"""Default-response requests/s of a 50-tree forest: predict + predict_proba (two passes over
the trees) against probabilities once with labels derived (single pass), same run.

Both variants are the same generated service and Bento contents but for the contract's
``single_pass`` flag, served one after the other on the same machine, in alternating
rounds; a load process of its own drives 16 connections of 1-row requests (the default
response carries probabilities). Prints requests/s per round and the median ratio.

Run: python -m devstack test -- -q -s -m benchmark tests/benchmarks/test_contract_bench.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.models import train_forest

pytestmark = pytest.mark.benchmark

ROUNDS, CONNECTIONS, REQUESTS, SECONDS = 3, 16, 1500, 20


def _load(url: str, body: str) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.contract_load",
            url,
            body,
            str(CONNECTIONS),
            str(REQUESTS),
            str(SECONDS),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["statuses"]) == {"200"}, result
    return float(result["rps"])


def test_single_pass_probabilities_requests_per_second(tmp_path, prepare_forest):
    backend, bentos, rows = prepare_forest
    body = json.dumps({"instances": rows})
    rates: dict[str, list[float]] = {"two_pass": [], "single_pass": []}
    handles = {}
    for variant, tag in bentos.items():
        handles[variant] = backend.slot_start(slot_key=f"bench-{variant}", bento_tag=tag)
    try:
        answers = {
            v: httpx.post(f"{h.url}/predict", content=body, timeout=30).json()
            for v, h in handles.items()
        }
        assert answers["two_pass"]["predictions"] == answers["single_pass"]["predictions"]
        np.testing.assert_allclose(
            answers["two_pass"]["probabilities"], answers["single_pass"]["probabilities"]
        )
        for _ in range(ROUNDS):
            for variant, handle in handles.items():
                rates[variant].append(_load(f"{handle.url}/predict", body))
    finally:
        for variant in handles:
            backend.slot_stop(slot_key=f"bench-{variant}")
    two, one = statistics.median(rates["two_pass"]), statistics.median(rates["single_pass"])
    print(
        f"\n50-tree forest, 1-row default responses, {CONNECTIONS} connections: "
        f"two passes {', '.join(f'{r:.0f}' for r in rates['two_pass'])} req/s; "
        f"single pass {', '.join(f'{r:.0f}' for r in rates['single_pass'])} req/s; "
        f"median ratio single/two = {one / two:.2f}x"
    )


@pytest.fixture
def prepare_forest(tmp_path):
    from deployments.integrations.bentoml import bento_build
    from deployments.runtime.local import LocalProcessBackend
    from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict

    trained = train_forest(50)
    artifact, reference = tmp_path / "forest.joblib", tmp_path / "reference.csv"
    artifact.write_bytes(trained.artifact)
    reference.write_bytes(trained.reference_csv)
    report = sandbox_load_and_predict(
        artifact_path=artifact, fmt="joblib", sample_path=reference, limits=SandboxLimits()
    )
    assert report.ok and report.contract["output"]["single_pass"], report
    home = tmp_path / "home"
    home.mkdir()
    bentos = {}
    for version, (variant, single) in enumerate((("two_pass", False), ("single_pass", True)), 1):
        contract = {
            **report.contract,
            "output": {**report.contract["output"], "single_pass": single},
        }
        bentos[variant] = bento_build(
            home=home,
            model_name="forest",
            version=version,
            artifact_path=artifact,
            framework="sklearn",
            fmt="joblib",
            feature_names=report.feature_names,
            contract=contract,
            log_path=tmp_path / f"{variant}.log",
        ).bento_tag
    backend = LocalProcessBackend(home, tmp_path / "serving", ready_timeout=90)
    yield backend, bentos, trained.frame.head(1).to_dict(orient="records")
    for status in backend.slots():
        backend.slot_stop(slot_key=status.slot_key)
