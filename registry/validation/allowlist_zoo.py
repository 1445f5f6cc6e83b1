"""Small fitted instances of every public estimator of the pinned model libraries.

The allow-list generator pickles these to learn which globals real models reference, and
the no-false-positives test scans and loads the same models: what the list was generated
from is exactly what is proved to pass. Fitting everything takes well under a minute.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

# Estimators of sklearn.utils.all_estimators() that are not fitted here, and why. Everything
# else must fit on the small data below (a new sklearn release that adds an estimator which
# does not fails the no-false-positives test until it is handled or listed here).
SKIPPED: dict[str, str] = {
    "FrozenEstimator": "wraps an already fitted estimator; fitting it is a no-op by design",
    "SparseCoder": "needs a dictionary matrix of the data's width, not a fit; it is stateless",
}

# Estimators whose input is not a numeric 2-D matrix.
_TEXT = {"CountVectorizer", "HashingVectorizer", "TfidfVectorizer"}
_DICTS = {"DictVectorizer", "FeatureHasher"}
_TARGET_ONLY = {"LabelBinarizer", "LabelEncoder", "MultiLabelBinarizer"}
_ONE_D = {"IsotonicRegression"}
_ROWS, _COLS = 60, 4


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(_ROWS, _COLS))
    # Three balanced classes (some estimators, e.g. NuSVC, refuse very unequal ones).
    labels = np.argsort(np.argsort(x[:, 0] + x[:, 1])) * 3 // _ROWS
    values = x @ np.arange(1.0, _COLS + 1) + rng.normal(scale=0.1, size=_ROWS)
    return x, labels, values


def _fit_one(name: str, estimator: Any) -> Any:
    from sklearn.base import is_regressor
    from sklearn.utils.estimator_checks import (
        _enforce_estimator_tags_X,
        _enforce_estimator_tags_y,
    )

    x, labels, values = _data()
    if name in _TEXT:
        words = ["alpha beta", "beta gamma", "gamma delta alpha", "delta"] * 5
        return estimator.fit(words)
    if name in _DICTS:
        return estimator.fit([{"a": 1.0, "b": 2.0}, {"a": 3.0, "c": 1.0}] * 5)
    if name == "MultiLabelBinarizer":
        return estimator.fit([["a", "b"], ["b"], ["c", "a"]])
    if name in _TARGET_ONLY:
        return estimator.fit(labels)
    if name in _ONE_D:
        return estimator.fit(x[:, 0], values)
    tags = estimator.__sklearn_tags__()
    # Unsupervised estimators take y=None and ignore a target, so every one gets one.
    y = values if is_regressor(estimator) else labels
    x = _enforce_estimator_tags_X(estimator, x)
    if tags.target_tags.single_output:
        y = _enforce_estimator_tags_y(estimator, y)
    else:
        y = np.column_stack([y, y[::-1]])
    return estimator.fit(x, y)


def sklearn_models() -> Iterator[tuple[str, Any]]:
    """(name, fitted estimator) for every public sklearn estimator not in SKIPPED.

    Raises if one fails to fit: the enumeration must stay complete.
    """
    from sklearn.utils import all_estimators
    from sklearn.utils._test_common.instance_generator import _construct_instances

    for name, cls in all_estimators():
        if name in SKIPPED:
            continue
        for i, estimator in enumerate(_construct_instances(cls)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fitted = _fit_one(name, estimator)
                except Exception as exc:
                    raise RuntimeError(f"{name} could not be fitted: {exc}") from exc
            yield (f"{name}#{i}" if i else name), fitted


def composite_models() -> Iterator[tuple[str, Any]]:
    """Models as data scientists ship them: pipelines on DataFrames, string labels."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, labels, _ = _data()
    frame = pd.DataFrame(x, columns=["age", "income", "visits", "score"])
    frame["city"] = np.array(["paris", "lyon", "nice"])[labels]
    named = np.array(["no", "yes", "maybe"])[labels]
    columns = ColumnTransformer(
        [("num", StandardScaler(), ["age", "income", "visits", "score"]),
         ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])]
    )  # fmt: skip
    yield (
        "pipeline-frame",
        make_pipeline(columns, LogisticRegression(max_iter=200)).fit(frame, named),
    )
    yield (
        "forest-frame",
        RandomForestClassifier(n_estimators=3, random_state=0).fit(
            frame.drop(columns="city"), named
        ),
    )
    yield "scaler-logreg", make_pipeline(StandardScaler(), LogisticRegression()).fit(x, labels)


def boosting_models() -> Iterator[tuple[str, Any]]:
    """The XGBoost and LightGBM sklearn wrappers and their boosters."""
    import lightgbm
    import xgboost

    x, labels, values = _data()
    binary = (labels > 0).astype(int)
    group = [_ROWS // 2, _ROWS - _ROWS // 2]
    small = {"n_estimators": 3, "n_jobs": 1}
    for cls, y in (
        (xgboost.XGBClassifier, labels),
        (xgboost.XGBRegressor, values),
        (xgboost.XGBRFClassifier, binary),
        (xgboost.XGBRFRegressor, values),
    ):
        yield cls.__name__, cls(**small).fit(x, y)
    yield "XGBRanker", xgboost.XGBRanker(**small).fit(x, labels, group=group)
    yield (
        "xgboost.Booster",
        xgboost.train(
            {"objective": "binary:logistic", "nthread": 1}, xgboost.DMatrix(x, binary), 3
        ),
    )
    # Any: keyword arguments for several estimators, whose stubs type each one differently.
    quiet: dict[str, Any] = {**small, "verbose": -1, "min_child_samples": 5}
    for cls, y in ((lightgbm.LGBMClassifier, labels), (lightgbm.LGBMRegressor, values)):
        yield cls.__name__, cls(**quiet).fit(x, y)
    yield "LGBMRanker", lightgbm.LGBMRanker(**quiet).fit(x, labels, group=group)
    yield (
        "lightgbm.Booster",
        lightgbm.train(
            {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5},
            lightgbm.Dataset(x, binary),
            num_boost_round=3,
        ),
    )


def all_models() -> Iterator[tuple[str, Any]]:
    yield from sklearn_models()
    yield from composite_models()
    yield from boosting_models()
