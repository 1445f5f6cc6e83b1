"""A representative subset of the matrix through the live stack: the real worker, slots and
gateway. Upload → validated → approved → live → gateway answers equal the model's own →
batch CSV and Parquet outputs equal. One deployment takes every version in turn, so only
its two slots ever run (the full matrix runs through the generated service in test_matrix).
"""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from registry.modelkit.contract import json_safe
from tests.conftest import bento_dirs_fresh
from tests.deployments.flows import _headers, _roll_out, _wait
from tests.models import contract_cases

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def bento_dirs(tmp_path_factory):
    # Its churn v1..v10 are the matrix's models, not the files other live tests built as
    # churn v1 in the session's store (a Bento refuses a second artifact under its tag).
    yield from bento_dirs_fresh(tmp_path_factory)


LIVE = [
    "sklearn_numpy_string_labels",  # rows keyed by the reference header, string labels
    "sklearn_pipeline_categorical",  # string categoricals, zip codes that look numeric
    "xgboost_json_binary",  # a native booster: labels and probabilities
    "lightgbm_text_string_labels",  # class_labels from the metadata
    "onnx_single_input",  # one matrix input, rows keyed by name
    "onnx_per_column",  # one ONNX feed per column
    "skops_forest",  # the data-only sklearn format
    "xgboost_ubj_regression",  # XGBoost's binary format, a booster that answers values
    "lightgbm_joblib_regression",  # the sklearn wrapper of LightGBM, a regressor
    "sklearn_regressor",  # a plain sklearn regressor: predictions only
]


def _upload(http, base, ds, rev, case) -> dict:
    uploaded = http.post(
        f"{base}/models/churn/versions/",
        headers=ds,
        data={"framework": case.framework, "metadata": json.dumps(case.metadata or {})},
        files={
            "file": (case.filename, case.artifact),
            "reference_data": ("r.csv", case.reference_csv(nan_first=True)),
        },
    )
    assert uploaded.status_code == 201, uploaded.text
    url = f"{base}/models/churn/versions/{uploaded.json()['number']}/"
    version = _wait(http, url, ds, lambda b: b["state"] in ("validated", "invalid"), 180)
    assert version["state"] == "validated", version
    assert http.post(f"{url}submit/", headers=ds, json={}).status_code == 200
    assert http.post(f"{url}reviews/", headers=rev, json={"decision": "approve"}).status_code == 201
    return version


def _batch(http, stack, headers, number, name, payload) -> pd.DataFrame:
    created = http.post(
        f"{stack.url}/api/v1/batch-jobs/",
        headers=headers,
        data={"model": "churn", "version": str(number), "probabilities": "true"},
        files={"file": (name, payload)},
    )
    assert created.status_code == 201, created.text
    url = f"{stack.url}/api/v1/batch-jobs/{created.json()['id']}/"
    deadline = time.monotonic() + 240
    while (job := http.get(url, headers=headers).json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "succeeded", job
    output = http.get(f"{url}output/", headers=headers)
    assert output.status_code == 200, output.text
    return pd.read_parquet(io.BytesIO(output.content))


def _same(answered, expected) -> None:
    expected = np.asarray(expected)
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(np.asarray(answered, dtype=float), expected, rtol=1e-5)
    else:
        assert json_safe(list(answered)) == json_safe(expected.tolist())


def test_representative_models_go_live_and_answer_like_themselves(live_stack):
    cases = contract_cases()
    base, gateway = live_stack["url"] + "/api/v1", live_stack["gateway"]
    ds, rev = _headers("dana", "data_scientist"), _headers("rory", "reviewer")
    ops = _headers("olive", "operator")
    with httpx.Client(timeout=120) as http:
        assert http.post(f"{base}/models/", headers=ds, json={"name": "churn"}).status_code == 201
        created = http.post(
            f"{base}/deployments/",
            headers=ops,
            json={"name": "churn-prod", "model": "churn", "environment": "production"},
        )
        assert created.status_code == 201, created.text
        key = http.post(f"{base}/deployments/churn-prod/keys/", headers=ops, json={}).json()["key"]
        for name in LIVE:
            case = cases[name]
            version = _upload(http, base, ds, rev, case)
            names = [f["name"] for f in version["contract"]["features"]]
            _roll_out(http, base, ops, version["number"], live_stack)
            frame = case.rows.head(20)
            rows = [
                dict(zip(names, json_safe(list(row)), strict=True))
                for row in frame.itertuples(index=False)
            ]
            answer = http.post(
                f"{gateway}/d/churn-prod/predict",
                headers={"Authorization": f"Bearer {key}"},
                json={"instances": rows},
            )
            assert answer.status_code == 200, (name, answer.text)
            assert int(answer.headers["X-Modelyard-Version"]) == version["number"]
            body = answer.json()
            _same(body["predictions"], case.predict(frame))
            if case.predict_proba is None:  # a regressor answers values, nothing else
                assert "probabilities" not in body and "classes" not in body, name
            else:
                proba = case.predict_proba(frame)
                np.testing.assert_allclose(body["probabilities"], proba, atol=1e-5)
                assert body["classes"] == json_safe(case.classes), name

            bad = http.post(
                f"{gateway}/d/churn-prod/predict",
                headers={"Authorization": f"Bearer {key}"},
                json={"instances": [rows[0], [1.0]]},
            )
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "wrong_width"
            assert bad.json()["error"]["details"]["row"] == 1

            inputs = frame.set_axis(names, axis=1)
            parquet = io.BytesIO()
            inputs.to_parquet(parquet, index=False)
            for file_name, payload in (
                ("in.csv", inputs.to_csv(index=False).encode()),
                ("in.parquet", parquet.getvalue()),
            ):
                output = _batch(http, live_stack, ds, version["number"], file_name, payload)
                _same(output["prediction"].tolist(), case.predict(frame))
                if case.predict_proba is None:
                    assert list(output.columns) == ["prediction"], (name, list(output.columns))
                    continue
                columns = [f"probability_{label}" for label in case.classes]
                np.testing.assert_allclose(
                    output[columns].to_numpy(), case.predict_proba(frame), atol=1e-5
                )
