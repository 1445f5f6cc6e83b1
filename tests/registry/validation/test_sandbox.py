from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict
from tests.registry.validation.helpers import FEATURES, CustomEstimator, Evil

LIMITS = SandboxLimits(timeout_seconds=60)


def _run(artifact, sample_path, limits=LIMITS):
    return sandbox_load_and_predict(
        artifact_path=artifact.path, fmt=artifact.fmt, sample_path=sample_path, limits=limits
    )


def _expected_preview(artifact, frame: pd.DataFrame) -> list:
    """What the model predicts when loaded right here, on the first 5 sample rows."""
    X = frame[FEATURES].head(5)
    # Native binary boosters answer labels like XGBClassifier/LGBMClassifier.predict.
    if artifact.fmt == "xgboost-json" or artifact.fmt == "xgboost-ubj":
        out = (artifact.model.inplace_predict(X) > 0.5).astype(int)
    elif artifact.fmt == "lightgbm-text":
        out = (artifact.model.predict(X) > 0.5).astype(int)
    elif artifact.fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            artifact.model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        out = session.run(None, {session.get_inputs()[0].name: X.to_numpy(np.float32)})[0]
    else:
        out = artifact.model.predict(X)
    return json.loads(json.dumps(np.asarray(out).tolist()))


@pytest.mark.parametrize(
    "name",
    [
        "pickle",
        "joblib",
        "joblib-compressed",
        "skops",
        "xgboost-json",
        "xgboost-ubj",
        "lightgbm-text",
        "onnx",
    ],
)
def test_sandbox_loads_and_predicts_every_format(
    artifacts, reference_csv, features_csv, reference_frame, name
):
    artifact = artifacts[name]
    # The ONNX model takes its features by position, so its sample must hold exactly them.
    report = _run(artifact, features_csv if name == "onnx" else reference_csv)

    assert report.ok, report.error
    assert report.error is None
    assert report.sample_source == "reference"
    assert report.sample_rows == len(reference_frame)
    assert report.output_shape[0] == len(reference_frame)
    assert report.predictions_preview == _expected_preview(artifact, reference_frame)
    assert report.n_features == len(FEATURES)
    # ONNX and numpy-fitted boosters keep no column names: the contract takes them from the
    # reference header, so clients key their rows by name for every model.
    assert report.feature_names == FEATURES
    assert report.load_seconds > 0
    assert report.predict_seconds >= 0
    assert report.peak_rss_bytes > 10 * 1024**2
    assert [column["name"] for column in report.input_schema] == (
        FEATURES if report.feature_names else [f"feature_{i}" for i in range(4)]
    )
    json.dumps(report.to_dict())  # the report is stored as JSON


def test_sandbox_orders_parquet_sample_columns_by_feature_names(
    artifacts, workdir, reference_frame
):
    path = workdir / "shuffled.parquet"
    reference_frame[["label", *reversed(FEATURES)]].to_parquet(path, index=False)
    artifact = artifacts["joblib"]

    report = _run(artifact, path)

    assert report.ok, report.error
    assert report.input_schema == [{"name": n, "dtype": "float64"} for n in FEATURES]
    assert report.predictions_preview == _expected_preview(artifact, reference_frame)


@pytest.mark.parametrize("name", ["xgboost-ubj", "onnx", "pickle"])
def test_sandbox_predicts_on_synthetic_sample_without_reference_data(artifacts, name):
    report = _run(artifacts[name], None)

    assert report.ok, report.error
    assert report.sample_source == "synthetic"
    assert report.sample_rows == 5
    assert len(report.predictions_preview) == 5
    assert len(report.input_schema) == len(FEATURES)


def test_sandbox_refuses_to_guess_positions_of_unnamed_features(artifacts, reference_csv):
    report = _run(artifacts["onnx"], reference_csv)  # features plus the label column

    assert not report.ok
    assert "takes 4 features by position, but the reference sample has 5 columns" in report.error


def test_sandbox_reports_missing_feature_columns(artifacts, workdir, reference_frame):
    path = workdir / "missing.csv"
    reference_frame.drop(columns=["income"]).to_csv(path, index=False)

    report = _run(artifacts["joblib"], path)

    assert not report.ok
    assert "lacks the model's feature column(s): income" in report.error


def test_sandbox_times_out_a_load_that_sleeps(write_pickle, no_leftover_processes):
    path = write_pickle(Evil(time.sleep, 30))
    started = time.monotonic()

    report = sandbox_load_and_predict(
        artifact_path=path,
        fmt="pickle",
        sample_path=None,
        limits=SandboxLimits(timeout_seconds=3),
    )

    # The restricted unpickler refuses the call before it runs (it used to time out here).
    assert not report.ok
    assert "GlobalRefusedError: time.sleep is not on the allow-list" in report.error
    assert time.monotonic() - started < 10


def test_sandbox_kills_processes_the_model_started(write_pickle, shared_tmp):
    import psutil

    pid_file = shared_tmp / "grandchild.pid"
    path = write_pickle(
        Evil(subprocess.Popen, ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"])
    )

    report = _run(type("A", (), {"path": path, "fmt": "pickle"}), None)

    # The restricted unpickler refuses Popen, so no process is ever started.
    assert not report.ok
    assert "GlobalRefusedError: subprocess.Popen" in report.error
    assert not pid_file.exists()
    del psutil


def test_sandbox_stops_a_load_that_exceeds_the_memory_limit(write_pickle):
    path = write_pickle(Evil(bytearray, 4 * 1024**3))

    report = sandbox_load_and_predict(
        artifact_path=path,
        fmt="pickle",
        sample_path=None,
        limits=SandboxLimits(timeout_seconds=30, memory_bytes=512 * 1024**2),
    )

    assert not report.ok
    assert "memory limit of 512 MB" in report.error


def test_sandbox_reports_a_crashing_load_with_its_stderr(write_pickle):
    path = write_pickle(Evil(ctypes.string_at, 0))  # reads address 0: SIGSEGV

    report = _run(type("A", (), {"path": path, "fmt": "pickle"}), None)

    assert not report.ok
    assert "GlobalRefusedError: ctypes.string_at" in report.error  # refused, never called


def test_sandbox_reports_a_load_that_exits(write_pickle):
    path = write_pickle(Evil(os._exit, 3))

    report = _run(type("A", (), {"path": path, "fmt": "pickle"}), None)

    assert not report.ok
    assert "GlobalRefusedError: posix._exit" in report.error  # refused, never called


def test_sandbox_reports_a_load_that_raises(write_pickle):
    path = write_pickle(Evil(bytearray, "not bytes"))  # an allowed type, a failing call

    report = _run(type("A", (), {"path": path, "fmt": "pickle"}), None)

    assert not report.ok
    assert report.error.startswith("model failed to load: TypeError: string argument")


@pytest.mark.parametrize(
    ("module", "top"), [("registry.validation", "registry"), ("config.settings", "config")]
)
def test_sandbox_child_cannot_import_the_project(write_pickle, module, top):
    # Even with the project installed into the environment (pip install -e .), a model
    # cannot reach its code or settings; a module has no predict(), so a successful
    # import would show up as a different error.
    path = write_pickle(Evil(__import__, module))

    report = _run(type("A", (), {"path": path, "fmt": "pickle"}), None)

    # The loader refuses __import__ outright; the project blocker stays behind it.
    assert not report.ok
    assert "GlobalRefusedError: builtins.__import__" in report.error
    del top


def test_sandbox_refuses_skops_types_outside_the_allow_list(tmp_path):
    import skops.io

    path = tmp_path / "custom.skops"
    skops.io.dump(CustomEstimator(), path)

    report = _run(type("A", (), {"path": path, "fmt": "skops"}), None)

    assert not report.ok
    assert "GlobalRefusedError: tests.registry.validation.helpers.CustomEstimator" in report.error


def test_sandbox_rejects_unknown_format_as_programming_error(artifacts):
    with pytest.raises(ValueError, match="unknown artifact format"):
        sandbox_load_and_predict(
            artifact_path=artifacts["pickle"].path, fmt="keras", sample_path=None, limits=LIMITS
        )
