"""No false positives: every public sklearn estimator that fits on small data (see
``allowlist_zoo.SKIPPED`` for the two that are not fitted, and why), the XGBoost and LightGBM
wrappers and boosters, and typical pipelines pass the scan and load through
``modelkit.loading`` as pickle, compressed joblib and skops."""

from __future__ import annotations

import pickle
import warnings

import joblib
import pytest
import skops.io

from registry.modelkit.loading import load_model, loader_decision
from registry.validation.allowlist_zoo import SKIPPED, all_models
from registry.validation.formats import detect_format
from registry.validation.scanning import scan_artifact


def _writers():
    yield "pickle", "sklearn", lambda model, path: path.write_bytes(pickle.dumps(model))
    yield "joblib", "sklearn", lambda model, path: joblib.dump(model, path, compress=3)
    yield "skops", "skops", lambda model, path: skops.io.dump(model, path)


def test_every_public_model_passes_the_scan_and_loads(tmp_path):
    from sklearn.utils import all_estimators

    checked, refused = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = list(all_models())
    names = {label.partition("#")[0] for label, _ in models}
    # The enumeration is complete: every public estimator is fitted or listed as skipped.
    assert {name for name, _ in all_estimators()} - names == set(SKIPPED)
    assert {"XGBClassifier", "XGBRanker", "LGBMClassifier", "lightgbm.Booster"} <= names
    for label, model in models:
        for fmt, framework, write in _writers():
            path = tmp_path / f"model.{fmt}"
            try:
                write(model, path)
            except skops.io.exceptions.UnsupportedTypeException:
                assert label == "Birch" and fmt == "skops"  # skops 0.16 cannot write Birch
                continue
            assert detect_format(path, framework) == fmt
            report = scan_artifact(path, fmt)
            if not report.safe:
                refused.append((label, fmt, [f.reason for f in report.findings]))
                continue
            loaded = load_model(path, loader_decision(fmt, report.skops_trusted))
            assert type(loaded) is type(model), label
            checked += 1
    assert refused == []
    assert checked > 700


@pytest.fixture(scope="module")
def safe_format_files(tmp_path_factory):
    import lightgbm
    import numpy as np
    import xgboost
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    out = tmp_path_factory.mktemp("safe")
    x = np.random.default_rng(0).normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, y), 2)
    booster.save_model(out / "m.json")
    booster.save_model(out / "m.ubj")
    params = {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5}
    lightgbm.train(params, lightgbm.Dataset(x, y), 2).save_model(out / "m.txt")
    onnx = to_onnx(LogisticRegression().fit(x, y), x[:1].astype(np.float32), target_opset=17)
    (out / "m.onnx").write_bytes(onnx.SerializeToString())
    return {
        "xgboost-json": out / "m.json",
        "xgboost-ubj": out / "m.ubj",
        "lightgbm-text": out / "m.txt",
        "onnx": out / "m.onnx",
    }


@pytest.mark.parametrize("fmt", ["xgboost-json", "xgboost-ubj", "lightgbm-text", "onnx"])
def test_safe_formats_load_through_the_one_loader(safe_format_files, fmt):
    assert scan_artifact(safe_format_files[fmt], fmt).safe
    assert load_model(safe_format_files[fmt], loader_decision(fmt), threads=1) is not None
