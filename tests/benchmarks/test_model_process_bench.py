"""What confining a model process costs: the validation child and a slot server's start,
under the platform's user (MODELYARD_MODEL_USER=none) and as the model user.

Run: .venv/bin/python -m devstack test -- -m benchmark -s \
     tests/benchmarks/test_model_process_bench.py
(prints medians and ratios; asserts only that each run loaded its model, never speed)
"""

from __future__ import annotations

import statistics
import time

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from core.model_process import model_user
from deployments.integrations.bentoml import bento_build
from deployments.runtime.local import LocalProcessBackend
from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict

pytestmark = [pytest.mark.benchmark]

ROUNDS = 5
USERS = ("none", "")  # "" = the default model user


def _model(path, padding_mb: int) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(200, 3))
    model = LogisticRegression().fit(matrix, matrix[:, 0] > 0)
    model.padding_ = np.zeros(padding_mb * 1024**2 // 8)  # file size, loaded and copied
    joblib.dump(model, path)


def _label(user: str) -> str:
    return "platform user" if user == "none" else f"model user ({model_user().name})"


@pytest.mark.parametrize("padding_mb", [0, 50])
def test_validation_child_cost(tmp_path, monkeypatch, padding_mb):
    if model_user() is None:
        pytest.skip("no model user on this machine: nothing to compare")
    path = tmp_path / "model.joblib"
    _model(path, padding_mb)
    seconds: dict[str, list[float]] = {user: [] for user in USERS}
    for _ in range(ROUNDS):
        for user in USERS:  # alternate, so drift in the machine's load hits both
            monkeypatch.setenv("MODELYARD_MODEL_USER", user)
            began = time.monotonic()
            report = sandbox_load_and_predict(
                artifact_path=path, fmt="joblib", sample_path=None, limits=SandboxLimits()
            )
            seconds[user].append(time.monotonic() - began)
            assert report.ok, report.error
    medians = {user: statistics.median(values) for user, values in seconds.items()}
    print(f"\nvalidation child, {path.stat().st_size / 1024**2:.1f} MB joblib, {ROUNDS} rounds:")
    for user, median in medians.items():
        print(f"  {_label(user):28s} median {median:.3f} s")
    print(f"  ratio model/platform user: {medians[''] / medians['none']:.2f}")


def test_slot_server_start_cost(tmp_path, monkeypatch):
    if model_user() is None:
        pytest.skip("no model user on this machine: nothing to compare")
    _model(tmp_path / "model.joblib", 0)
    home = tmp_path / "home"
    tag = bento_build(
        home=home,
        model_name="bench",
        version=1,
        artifact_path=tmp_path / "model.joblib",
        framework="sklearn",
        fmt="joblib",
        feature_names=["a", "b", "c"],
        log_path=tmp_path / "build.log",
    ).bento_tag
    seconds: dict[str, list[float]] = {user: [] for user in USERS}
    for index in range(3):
        for user in USERS:
            monkeypatch.setenv("MODELYARD_MODEL_USER", user)
            backend = LocalProcessBackend(home, tmp_path / f"state-{index}-{user or 'model'}")
            began = time.monotonic()
            backend.slot_start(slot_key="bench.blue", bento_tag=tag)
            seconds[user].append(time.monotonic() - began)
            isolation = backend.state.load("bench.blue").isolation
            backend.slot_stop(slot_key="bench.blue")
            assert (isolation["user"] is None) == (user == "none"), isolation
    medians = {user: statistics.median(values) for user, values in seconds.items()}
    print("\nslot server start to /readyz 200, 3 rounds:")
    for user, median in medians.items():
        print(f"  {_label(user):28s} median {median:.2f} s")
    print(f"  ratio model/platform user: {medians[''] / medians['none']:.2f}")
