"""The contract's rules, applied in-process by registry/modelkit/contract.py, and decided by
the real validation child."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from registry.modelkit import contract as mc
from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict
from tests.models import FEATURES, training_frame


def contract_of(features, *, form="frame", output=None):
    return {
        "version": 1,
        "family": "estimator",
        "features": features,
        "names_source": "model",
        "input": {"form": form, "dtype": "float64"},
        "output": output or {"kind": "value", "classes": None, "probabilities": False},
    }


ZIP = {"name": "zip", "type": "string", "nullable": False, "strict": False}
COUNT = {"name": "count", "type": "integer", "nullable": True, "strict": False}
STRICT = {"name": "count", "type": "integer", "nullable": False, "strict": True}


def test_numeric_looking_strings_in_a_csv_stay_strings():
    raw = pd.read_csv(io.StringIO("zip,count\n02139,3\n10001,4.0\n"), dtype=str)
    frame = mc.typed_frame(contract_of([ZIP, COUNT]), raw)
    assert frame["zip"].tolist() == ["02139", "10001"]
    assert frame["count"].tolist() == [3, 4] and frame["count"].dtype == np.int64


def test_an_integer_feature_takes_12_0_and_refuses_12_5_only_where_the_model_would():
    lenient, strict = contract_of([COUNT]), contract_of([STRICT])
    assert mc.rows_to_frame(strict, [[12.0]])["count"].tolist() == [12]
    assert mc.rows_to_frame(lenient, [[12.5]])["count"].tolist() == [12.5]
    with pytest.raises(mc.ContractError) as refused:
        mc.rows_to_frame(strict, [[1], [12.5]])
    assert refused.value.code == "not_integer"
    assert refused.value.details == {"row": 1, "feature": "count"}
    raw = pd.DataFrame({"count": ["1", "12.5"]})
    with pytest.raises(mc.ContractError, match="whole numbers"):
        mc.typed_frame(strict, raw)


def test_a_number_for_a_category_is_refused_naming_row_and_feature():
    with pytest.raises(mc.ContractError) as refused:
        mc.rows_to_frame(contract_of([ZIP]), [{"zip": "02139"}, {"zip": 2139}])
    assert refused.value.body() == {
        "error": {
            "code": "wrong_type",
            "message": "row 1: feature 'zip' takes a string (category); got 2139",
            "details": {"row": 1, "feature": "zip", "expected": "string", "found": "number"},
        }
    }


def test_json_null_is_nan_for_models_that_take_missing_values_and_nan_answers_null():
    frame = mc.rows_to_frame(contract_of([COUNT]), [[None], [2]])
    assert np.isnan(frame["count"].iloc[0])
    with pytest.raises(mc.ContractError, match="may not be null"):
        mc.rows_to_frame(contract_of([STRICT]), [[None]])
    assert mc.json_safe(np.array([1.0, np.nan, np.inf])) == [1.0, None, None]
    assert mc.frame_to_rows(contract_of([COUNT]), frame) == [{"count": None}, {"count": 2.0}]


class CountingForest:
    """A real fitted forest that counts its passes over the trees."""

    def __init__(self, forest):
        self.forest, self.passes = forest, 0
        self.classes_ = forest.classes_

    def predict(self, x):
        self.passes += 1
        return self.forest.predict(x)

    def predict_proba(self, x):
        self.passes += 1
        return self.forest.predict_proba(x)


def test_probabilities_are_computed_once_when_predict_is_their_argmax():
    from sklearn.ensemble import RandomForestClassifier

    frame, target = training_frame()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, target)
    counting = CountingForest(forest)
    features = [{"name": n, "type": "number", "nullable": False} for n in FEATURES]
    output = {"kind": "label", "classes": [0, 1], "probabilities": True, "single_pass": True}
    predictor = mc.Predictor(counting, contract_of(features, output=output))
    predictions, proba = predictor.predict_frame(frame)
    assert counting.passes == 1
    assert predictions.tolist() == forest.predict(frame).tolist()
    np.testing.assert_array_equal(proba, forest.predict_proba(frame))
    two_pass = mc.Predictor(
        counting, contract_of(features, output={**output, "single_pass": False})
    )
    two_pass.predict_frame(frame)
    assert counting.passes == 3


def _validate(tmp_path, artifact: bytes, name: str, *, sample: bytes | None = None, **kwargs):
    path = tmp_path / name
    path.write_bytes(artifact)
    sample_path = None
    if sample is not None:
        sample_path = tmp_path / "reference.csv"
        sample_path.write_bytes(sample)
    fmt = {"txt": "lightgbm-text", "joblib": "joblib", "json": "xgboost-json"}[name.split(".")[-1]]
    return sandbox_load_and_predict(
        artifact_path=path, fmt=fmt, sample_path=sample_path, limits=SandboxLimits(), **kwargs
    )


def test_lightgbm_text_with_string_labels_answers_the_given_labels_or_says_0_to_k(tmp_path):
    import lightgbm as lgb

    frame, target = training_frame()
    labels = np.where(target == 1, "churn", "stay")
    model = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(frame, labels)
    text = model.booster_.model_to_string().encode()
    named = _validate(tmp_path, text, "m.txt", class_labels=["churn", "stay"])
    assert named.ok, named.error
    assert named.contract["output"]["classes"] == ["churn", "stay"]
    assert named.contract["output"]["labels_source"] == "metadata"
    assert set(named.predictions_preview) <= {"churn", "stay"}
    unnamed = _validate(tmp_path, text, "m.txt")
    assert unnamed.contract["output"]["classes"] == [0, 1]
    assert unnamed.contract["output"]["labels_source"] == "index"
    wrong = _validate(tmp_path, text, "m.txt", class_labels=["a", "b", "c"])
    assert not wrong.ok and "3 class_labels; the model has 2 classes" in wrong.error


def test_a_model_that_fails_on_the_synthetic_sample_suggests_reference_data(tmp_path):
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"store": [101, 205, 307, 101] * 20, "age": np.arange(80.0)})
    target = np.arange(80) % 2
    model = make_pipeline(
        ColumnTransformer([("c", OneHotEncoder(), ["store"])], remainder="passthrough"),
        LogisticRegression(),
    ).fit(frame, target)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    report = _validate(tmp_path, buffer.getvalue(), "m.joblib")
    assert not report.ok
    assert "synthetic sample" in report.error and "upload reference data" in report.error
    fixed = _validate(
        tmp_path, buffer.getvalue(), "m.joblib", sample=frame.to_csv(index=False).encode()
    )
    assert fixed.ok, fixed.error


def test_a_refused_smoke_request_fails_the_rollout_with_the_slots_own_words():
    import httpx

    from deployments.services.rollouts import _slot_error_text

    body = mc.error_body("wrong_type", "row 0: feature 'zip' takes a string", {"row": 0})
    refused = httpx.Response(400, json=body)
    assert _slot_error_text(refused) == (
        "wrong_type: row 0: feature 'zip' takes a string {\"row\": 0}"
    )
    assert _slot_error_text(httpx.Response(502, text="upstream gone")) == "upstream gone"
