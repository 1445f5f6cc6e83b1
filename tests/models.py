"""Small real models and data for tests: trained here, never downloaded."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURES = ["age", "income", "visits", "score"]


def training_frame(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.normal(50_000, 15_000, n),
            "visits": rng.poisson(3, n).astype(float),
            "score": rng.uniform(0, 1, n),
        }
    )
    target = ((frame["age"] - 40) / 10 + frame["score"] * 2 + rng.normal(0, 0.5, n) > 1).astype(int)
    return frame, target.to_numpy()


@dataclass(frozen=True)
class TrainedModel:
    artifact: bytes
    reference_csv: bytes
    frame: pd.DataFrame
    model: object


def train_sklearn_joblib(seed: int = 0, estimator=None) -> TrainedModel:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = training_frame(seed=seed)
    estimator = estimator if estimator is not None else LogisticRegression(max_iter=200)
    model = make_pipeline(StandardScaler(), estimator).fit(frame, target)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return TrainedModel(
        buffer.getvalue(), frame.head(200).to_csv(index=False).encode(), frame, model
    )


class Malicious:
    """Pickles to os.system('...') — the classic model-file code execution."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/modelyard-pwned",))


# --- the contract matrix: one real model per framework, format and shape -------------------


@dataclass(frozen=True)
class ContractCase:
    """A model as a data scientist uploads it, and how it answers in-process.

    ``rows`` are the feature columns a client keys its rows by (and a reference CSV holds);
    ``predict``/``predict_proba`` are the model's own answers on such a frame.
    """

    name: str
    framework: str
    filename: str
    artifact: bytes
    rows: pd.DataFrame
    predict: object
    predict_proba: object | None = None
    classes: list | None = None
    metadata: dict | None = None

    def reference_csv(self, n: int = 60, nan_first: bool = False) -> bytes:
        frame = self.rows.head(n).copy()
        if nan_first:
            numeric = [c for c in frame.columns if frame[c].dtype.kind == "f"]
            frame.loc[frame.index[0], numeric[0]] = np.nan
        return frame.to_csv(index=False).encode()


def _joblib_bytes(model) -> bytes:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def mixed_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Numbers, a string category and zip codes that look numeric (leading zeros)."""
    frame, target = training_frame(n, seed)
    rng = np.random.default_rng(seed + 1)
    frame["plan"] = rng.choice(["basic", "plus", "pro"], n)
    frame["zip"] = rng.choice(["02139", "10001", "94103", "00501"], n)
    return frame, target


def _xgb_file(model, suffix: str) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        model.save_model(str(path))
        return path.read_bytes()


def contract_cases() -> dict[str, ContractCase]:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cases: dict[str, ContractCase] = {}
    frame, target = training_frame(300)
    matrix = frame.to_numpy()
    multi = (target + (frame["visits"].to_numpy() > 3)).astype(int)  # 3 classes
    value = frame["age"].to_numpy() * 2.0 + frame["score"].to_numpy()

    def add(case: ContractCase) -> None:
        cases[case.name] = case

    mixed, mixed_target = mixed_frame()
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "zip"]),
                ("num", StandardScaler(), FEATURES),
            ]
        ),
        LogisticRegression(max_iter=300),
    ).fit(mixed, mixed_target)
    add(
        ContractCase(
            "sklearn_pipeline_categorical",
            "sklearn",
            "m.joblib",
            _joblib_bytes(pipeline),
            mixed,
            pipeline.predict,
            pipeline.predict_proba,
            list(pipeline.classes_),
        )
    )

    labels = np.where(target == 1, "churn", "stay")
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(matrix, labels)
    add(
        ContractCase(
            "sklearn_numpy_string_labels",
            "sklearn",
            "m.joblib",
            _joblib_bytes(forest),
            frame,
            lambda f, m=forest: m.predict(f.to_numpy()),
            lambda f, m=forest: m.predict_proba(f.to_numpy()),
            list(forest.classes_),
        )
    )

    regressor = LinearRegression().fit(frame, value)
    add(
        ContractCase(
            "sklearn_regressor",
            "sklearn",
            "m.joblib",
            _joblib_bytes(regressor),
            frame,
            regressor.predict,
        )
    )

    xgb_clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(frame, target)
    add(
        ContractCase(
            "xgboost_joblib_binary",
            "sklearn",
            "m.joblib",
            _joblib_bytes(xgb_clf),
            frame,
            xgb_clf.predict,
            xgb_clf.predict_proba,
            [0, 1],
        )
    )
    for suffix, fmt in ((".json", "json"), (".ubj", "ubj")):
        add(
            ContractCase(
                f"xgboost_{fmt}_binary",
                "xgboost",
                f"m{suffix}",
                _xgb_file(xgb_clf, suffix),
                frame,
                xgb_clf.predict,
                xgb_clf.predict_proba,
                [0, 1],
            )
        )
    xgb_multi = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(frame, multi)
    add(
        ContractCase(
            "xgboost_json_multiclass",
            "xgboost",
            "m.json",
            _xgb_file(xgb_multi, ".json"),
            frame,
            xgb_multi.predict,
            xgb_multi.predict_proba,
            [0, 1, 2],
        )
    )
    xgb_reg = xgb.XGBRegressor(n_estimators=8, max_depth=3).fit(frame, value)
    add(
        ContractCase(
            "xgboost_ubj_regression",
            "xgboost",
            "m.ubj",
            _xgb_file(xgb_reg, ".ubj"),
            frame,
            xgb_reg.predict,
        )
    )
    xgb_np = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(matrix, target)
    add(
        ContractCase(
            "xgboost_json_numpy",
            "xgboost",
            "m.json",
            _xgb_file(xgb_np, ".json"),
            frame,
            lambda f, m=xgb_np: m.predict(f.to_numpy()),
            lambda f, m=xgb_np: m.predict_proba(f.to_numpy()),
            [0, 1],
        )
    )

    lgb_params = {"n_estimators": 10, "num_leaves": 7, "verbose": -1}
    lgb_clf = lgb.LGBMClassifier(**lgb_params).fit(frame, target)
    add(
        ContractCase(
            "lightgbm_joblib_binary",
            "sklearn",
            "m.joblib",
            _joblib_bytes(lgb_clf),
            frame,
            lgb_clf.predict,
            lgb_clf.predict_proba,
            [0, 1],
        )
    )
    add(
        ContractCase(
            "lightgbm_text_binary",
            "lightgbm",
            "m.txt",
            lgb_clf.booster_.model_to_string().encode(),
            frame,
            lgb_clf.predict,
            lgb_clf.predict_proba,
            [0, 1],
        )
    )
    lgb_reg = lgb.LGBMRegressor(**lgb_params).fit(frame, value)
    add(
        ContractCase(
            "lightgbm_joblib_regression",
            "sklearn",
            "m.joblib",
            _joblib_bytes(lgb_reg),
            frame,
            lgb_reg.predict,
        )
    )
    add(
        ContractCase(
            "lightgbm_text_regression",
            "lightgbm",
            "m.txt",
            lgb_reg.booster_.model_to_string().encode(),
            frame,
            lgb_reg.predict,
        )
    )
    lgb_str = lgb.LGBMClassifier(**lgb_params).fit(frame, labels)
    add(
        ContractCase(
            "lightgbm_text_string_labels",
            "lightgbm",
            "m.txt",
            lgb_str.booster_.model_to_string().encode(),
            frame,
            lgb_str.predict,
            lgb_str.predict_proba,
            list(lgb_str.classes_),
            {"class_labels": [str(c) for c in lgb_str.classes_]},
        )
    )

    add(_onnx_single(frame, target))
    add(_onnx_per_column(frame, target))
    add(_skops_case(frame, target))
    return cases


def _onnx_single(frame: pd.DataFrame, target: np.ndarray) -> ContractCase:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=300).fit(frame.to_numpy(np.float32), target)
    onx = to_onnx(model, frame.to_numpy(np.float32)[:1], target_opset=17)
    return ContractCase(
        "onnx_single_input",
        "onnx",
        "m.onnx",
        onx.SerializeToString(),
        frame,
        lambda f: model.predict(f.to_numpy(np.float32)),
        lambda f: model.predict_proba(f.to_numpy(np.float32)),
        [0, 1],
    )


def _onnx_per_column(frame: pd.DataFrame, target: np.ndarray) -> ContractCase:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), FEATURES)]), LogisticRegression(max_iter=300)
    ).fit(frame, target)
    onx = convert_sklearn(
        model, initial_types=[(n, FloatTensorType([None, 1])) for n in FEATURES], target_opset=17
    )
    return ContractCase(
        "onnx_per_column",
        "onnx",
        "m.onnx",
        onx.SerializeToString(),
        frame,
        lambda f: model.predict(f.astype(np.float32)),
        lambda f: model.predict_proba(f.astype(np.float32)),
        [0, 1],
    )


def _skops_case(frame: pd.DataFrame, target: np.ndarray) -> ContractCase:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, target)
    return ContractCase(
        "skops_forest",
        "skops",
        "m.skops",
        skops.io.dumps(model),
        frame,
        model.predict,
        model.predict_proba,
        [0, 1],
    )


def train_forest(n_estimators: int = 50) -> TrainedModel:
    """The benchmark's forest: a joblib RandomForestClassifier on the usual frame."""
    from sklearn.ensemble import RandomForestClassifier

    frame, target = training_frame()
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=0).fit(frame, target)
    return TrainedModel(
        _joblib_bytes(model), frame.head(200).to_csv(index=False).encode(), frame, model
    )
