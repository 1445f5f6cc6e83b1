"""What replicas cost: a slot's start with 1 and with 3 `bentoml serve` replicas (started in
parallel), a scale-up by one replica to ready, a scale-down by one, and the memory per
replica.

Run: .venv/bin/python -m devstack test -- -m benchmark -s tests/benchmarks/test_replicas_bench.py
(prints medians and ratios measured in the same run; asserts only that the replicas serve)
"""

from __future__ import annotations

import statistics
import time

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from deployments.integrations.bentoml import bento_build
from deployments.runtime.local import LocalProcessBackend

pytestmark = [pytest.mark.benchmark]

ROUNDS = 3


def test_replica_start_scale_and_memory(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(200, 3))
    joblib.dump(LogisticRegression().fit(matrix, matrix[:, 0] > 0), tmp_path / "m.joblib")
    home = tmp_path / "home"
    tag = bento_build(
        home=home,
        model_name="bench",
        version=1,
        artifact_path=tmp_path / "m.joblib",
        framework="sklearn",
        fmt="joblib",
        feature_names=["a", "b", "c"],
        log_path=tmp_path / "build.log",
    ).bento_tag
    seconds: dict[str, list[float]] = {"start 1": [], "start 3": [], "up +1": [], "down -1": []}
    rss: dict[int, list[int]] = {1: [], 3: []}
    for index in range(ROUNDS):
        for replicas in (1, 3):
            backend = LocalProcessBackend(home, tmp_path / f"state-{index}-{replicas}")
            began = time.monotonic()
            handle = backend.slot_start(slot_key="bench.blue", bento_tag=tag, replicas=replicas)
            seconds[f"start {replicas}"].append(time.monotonic() - began)
            for url in handle.urls:
                assert httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200
            rss[replicas].append(backend.slot_resources(slot_key="bench.blue").rss_bytes)
            if replicas == 1:
                began = time.monotonic()
                backend.slot_scale(slot_key="bench.blue", replicas=2)
                seconds["up +1"].append(time.monotonic() - began)
                began = time.monotonic()
                backend.slot_scale(slot_key="bench.blue", replicas=1)
                seconds["down -1"].append(time.monotonic() - began)
            backend.slot_stop(slot_key="bench.blue")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"\nreplicas of one slot, {ROUNDS} rounds (medians):")
    for name, median in medians.items():
        print(f"  {name:8s} {median:.2f} s")
    print(f"  ratio start 3 / start 1: {medians['start 3'] / medians['start 1']:.2f}")
    one, three = statistics.median(rss[1]), statistics.median(rss[3])
    print(
        f"  RSS 1 replica {one / 2**20:.0f} MB, 3 replicas {three / 2**20:.0f} MB "
        f"(ratio {three / one:.2f})"
    )
