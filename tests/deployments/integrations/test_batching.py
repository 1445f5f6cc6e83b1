"""Concurrent requests are predicted together, and each is still answered on its own.

The generated service hands every /predict request to ``modelkit.serving.Batcher``, which
predicts the requests queued meanwhile in one model call (``batch_outcomes``). These tests
use real models, real Bentos and real ``bentoml serve`` processes; the service's own
``modelyard_batch_requests`` histogram on /metrics shows how many requests each model call
took. A DataFrame-fitted pipeline with string categories whose encoder refuses unknown
categories gives the model-refuses-rows case (the contract lets any string through).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from deployments.integrations.bentoml import SERVICE_NAME, bento_build, serve_environment
from registry.modelkit import serving
from registry.modelkit.contract import Predictor, json_safe
from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict
from tests.models import FEATURES, mixed_frame, training_frame


@dataclass(frozen=True)
class Served:
    bento_tag: str
    model: Any
    contract: dict[str, Any]
    frame: Any  # the client's rows, keyed by the contract's names


def _validated_bento(home: Path, tmp: Path, name: str, model: Any, frame: Any) -> Served:
    artifact, reference = tmp / f"{name}.joblib", tmp / f"{name}.csv"
    joblib.dump(model, artifact)
    frame.head(60).to_csv(reference, index=False)
    report = sandbox_load_and_predict(
        artifact_path=artifact, fmt="joblib", sample_path=reference, limits=SandboxLimits()
    )
    assert report.ok, report.error
    built = bento_build(
        home=home,
        model_name=name,
        version=1,
        artifact_path=artifact,
        framework="sklearn",
        fmt="joblib",
        feature_names=report.feature_names,
        contract=report.contract,
        log_path=tmp / f"{name}.log",
    )
    named = frame.copy()
    named.columns = report.feature_names
    return Served(built.bento_tag, model, report.contract, named)


@pytest.fixture(scope="module")
def categorical(home, tmp_path_factory) -> Served:
    """Fitted on a DataFrame with string categories; its encoder refuses unknown ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = mixed_frame()
    model = make_pipeline(
        ColumnTransformer(
            [
                ("cat", OneHotEncoder(handle_unknown="error"), ["plan", "zip"]),
                ("num", StandardScaler(), FEATURES),
            ]
        ),
        LogisticRegression(max_iter=300),
    ).fit(frame, target)
    return _validated_bento(home, tmp_path_factory.mktemp("categorical"), "cats", model, frame)


@pytest.fixture(scope="module")
def numpy_forest(home, tmp_path_factory) -> Served:
    """Fitted on a bare matrix (no feature names) with string labels."""
    from sklearn.ensemble import RandomForestClassifier

    frame, target = training_frame(300)
    labels = np.where(target == 1, "churn", "stay")
    model = RandomForestClassifier(n_estimators=30, random_state=0).fit(frame.to_numpy(), labels)
    return _validated_bento(home, tmp_path_factory.mktemp("forest"), "forest", model, frame)


def _rows(frame: Any) -> list[dict[str, Any]]:
    return [{k: json_safe(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _batch_counts(url: str) -> tuple[float, float]:
    """(model calls, requests they predicted) from the service's histogram."""
    text = httpx.get(f"{url}/metrics", trust_env=False, timeout=10).text
    count = re.search(r"^modelyard_batch_requests_count(?:\{[^}]*\})? (\S+)$", text, re.M)
    total = re.search(r"^modelyard_batch_requests_sum(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert count and total, text[-2000:]
    return float(count.group(1)), float(total.group(1))


async def _post_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
        return await asyncio.gather(*(client.post(f"{url}/predict", json=b) for b in bodies))


# --------------------------------------------------------------------------- in-process


def test_one_model_call_answers_each_request_on_its_own(categorical):
    """The batch path itself, with no server timing in the way: bad requests of every kind
    beside good ones with and without probabilities, all in one ``batch_outcomes`` call."""
    predictor = Predictor(categorical.model, categorical.contract)
    rows = _rows(categorical.frame.head(6))
    unknown = {**rows[0], "plan": "platinum"}  # the encoder has never seen it
    requests = [
        {"instances": rows[0:2], "probabilities": True},
        {"instances": [{"age": 1}], "probabilities": True},  # lacks features
        {"instances": [unknown], "probabilities": True},  # the model refuses it
        {"instances": rows[2:3], "probabilities": False},
        {"instances": rows[3:6], "probabilities": "yes"},  # not a boolean
        {"instances": rows[3:6], "probabilities": True},
    ]
    outcomes = serving.batch_outcomes(predictor, requests, 7)
    statuses = [status for status, _ in outcomes]
    assert statuses == [200, 400, 400, 200, 400, 200]
    assert outcomes[1][1]["error"]["code"] == "missing_feature"
    assert outcomes[2][1]["error"]["code"] == "model_rejected_input"
    assert outcomes[4][1]["error"]["code"] == "invalid_request"
    frame = categorical.frame
    for (status, body), lo, hi, proba in ((outcomes[0], 0, 2, True), (outcomes[3], 2, 3, False)):
        assert body["predictions"] == categorical.model.predict(frame.iloc[lo:hi]).tolist()
        assert ("probabilities" in body) is proba
        assert body["model_version"] == 7
    np.testing.assert_allclose(
        outcomes[5][1]["probabilities"], categorical.model.predict_proba(frame.iloc[3:6])
    )


def _bentoml_dict_bytes() -> Any:
    """What BentoML's JSON serde made of a body the API returned as a dict (the service's
    answer before it returned pre-encoded bytes)."""
    from _bentoml_impl.serde import JSONSerde
    from _bentoml_sdk.io_models import IODescriptor

    def predict() -> dict[str, Any]: ...

    spec = IODescriptor.from_output(predict)
    return lambda body: b"".join(JSONSerde().serialize_model(spec(body)).data)


def test_answer_bytes_hold_what_bentoml_made_of_the_body(categorical, numpy_forest):
    """The service returns ``body_bytes`` of each outcome instead of the dict: the same JSON
    values BentoML's serde wrote (``json.dumps``), spelled compactly in UTF-8, for a
    DataFrame-fitted and a numpy-fitted model, string labels, numeric-looking string
    categories, NaN sent for a feature, and the 400 body of a bad row."""
    cats = Predictor(categorical.model, categorical.contract)
    forest = Predictor(numpy_forest.model, numpy_forest.contract)
    rows = _rows(categorical.frame.head(5))
    matrix = numpy_forest.frame.head(5).to_numpy().tolist()
    with_nan = [[math.nan, *matrix[0][1:]], *matrix[1:]]
    outcomes = [
        *serving.batch_outcomes(cats, [{"instances": rows}, {"instances": rows[:1]}], 3),
        *serving.batch_outcomes(cats, [{"instances": [{**rows[0], "age": "old"}]}], 3),
        *serving.batch_outcomes(forest, [{"instances": matrix, "probabilities": False}], 3),
        *serving.batch_outcomes(forest, [{"instances": with_nan}], 3),
    ]
    takes_nan = bool(numpy_forest.contract["features"][0].get("nullable"))
    assert [status for status, _ in outcomes] == [200, 200, 400, 200, 200 if takes_nan else 400]
    assert rows[0]["zip"].startswith("0") and outcomes[3][1]["predictions"][0] in ("churn", "stay")
    bodies = [body for _, body in outcomes] + [
        # Values no model here answers: non-ASCII and numeric-looking labels, tiny floats.
        {"predictions": ["é", "0012", None, True], "probabilities": [[1e-08, 1 - 1e-08]]},
    ]
    bentoml_bytes = _bentoml_dict_bytes()
    for body in bodies:
        encoded = serving.body_bytes(body)
        # The same values, floats to the last bit (json.loads compares them exactly).
        assert json.loads(encoded) == json.loads(bentoml_bytes(body)) == body
        assert encoded.decode("utf-8") == json.dumps(
            body, separators=(",", ":"), ensure_ascii=False
        ) or (
            b"e-" in encoded  # exponents are the only other spelling that differs
        )


def test_settled_collector_skips_what_the_service_loaded():
    threshold = gc.get_threshold()
    try:
        serving.settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (serving.GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_batch_settings_reach_the_service_through_bentoml_config_options(tmp_path):
    env = serve_environment(bentoml_home=tmp_path, workers=2, batch_max_size=64)
    options = env["BENTOML_CONFIG_OPTIONS"].split()
    assert f"services.{SERVICE_NAME}.workers=2" in options
    settings = serving.BatchSettings.from_environment(SERVICE_NAME, env)
    assert (settings.max_size, settings.max_latency_ms) == (64, 10)
    assert serving.BatchSettings.from_environment(SERVICE_NAME, {}) == serving.BatchSettings()
    with pytest.raises(ValueError):
        serve_environment(bentoml_home=tmp_path, batch_max_size=0)


# --------------------------------------------------------------------------- served


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(backend, categorical):
    handle = backend.slot_start(slot_key="batch-cats", bento_tag=categorical.bento_tag)
    try:
        calls_before, requests_before = _batch_counts(handle.url)
        rows = _rows(categorical.frame.head(40))
        bodies: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            bodies.append({"instances": [row], "probabilities": index % 2 == 0})
        bad = {
            5: {"instances": [{**rows[5], "plan": "platinum"}]},  # the model refuses it
            11: {"instances": [{"age": 3}]},  # the contract refuses it
            17: {"instances": [{**rows[17], "age": "old"}]},  # wrong type
        }
        for index, body in bad.items():
            bodies[index] = body
        answers = asyncio.run(_post_all(handle.url, bodies))
        model, frame = categorical.model, categorical.frame
        for index, answer in enumerate(answers):
            if index in bad:
                assert answer.status_code == 400, answer.text
                continue
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["predictions"] == model.predict(frame.iloc[[index]]).tolist()
            if index % 2 == 0:
                np.testing.assert_allclose(
                    body["probabilities"], model.predict_proba(frame.iloc[[index]]), rtol=1e-9
                )
            else:
                assert "probabilities" not in body
        codes = {i: answers[i].json()["error"]["code"] for i in bad}
        assert codes == {5: "model_rejected_input", 11: "missing_feature", 17: "wrong_type"}
        calls, requests = _batch_counts(handle.url)
        assert requests - requests_before == len(bodies)
        # Fewer model calls than requests: some requests were predicted together.
        assert calls - calls_before < len(bodies), (calls - calls_before, len(bodies))
    finally:
        backend.slot_stop(slot_key="batch-cats")


def test_numpy_fitted_model_answers_concurrent_rows_like_itself(backend, numpy_forest):
    handle = backend.slot_start(slot_key="batch-forest", bento_tag=numpy_forest.bento_tag)
    try:
        frame = numpy_forest.frame.head(48)
        rows = frame.to_numpy().tolist()
        bodies = [{"instances": [row]} for row in rows] + [{"instances": rows}]
        answers = asyncio.run(_post_all(handle.url, bodies))
        assert [a.status_code for a in answers] == [200] * len(bodies)
        expected = numpy_forest.model.predict(frame.to_numpy()).tolist()
        proba = numpy_forest.model.predict_proba(frame.to_numpy())
        assert [a.json()["predictions"][0] for a in answers[:-1]] == expected
        assert answers[-1].json()["predictions"] == expected
        np.testing.assert_allclose(answers[-1].json()["probabilities"], proba)
        assert answers[0].json()["classes"] == ["churn", "stay"]
        # The very bytes the service's own predictor makes of these rows, sent as JSON.
        predictor = Predictor(numpy_forest.model, numpy_forest.contract)
        body = serving.request_outcome(predictor, rows, True, 1)[1]
        assert answers[-1].content == serving.body_bytes(body)
        assert answers[-1].headers["content-type"] == "application/json"
        bad = httpx.post(f"{handle.url}/predict", json={"instances": [rows[0][:2]]}, timeout=30)
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "wrong_width"
    finally:
        backend.slot_stop(slot_key="batch-forest")
