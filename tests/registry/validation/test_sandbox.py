from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict
from tests.registry.validation.helpers import FEATURES, CustomEstimator, Evil, probe_pickle

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


def _run_probe(tmp_path, probe: str, *args, limits=LIMITS):
    """Load a pickle calling a test payload, in a child given the probe copy of modelkit
    (``allowlist_hole``): the payload really runs, as if the allow-list had a hole."""
    path = tmp_path / f"{probe}.pkl"
    path.write_bytes(probe_pickle(probe, *args))
    return sandbox_load_and_predict(
        artifact_path=path, fmt="pickle", sample_path=None, limits=limits
    )


def test_probe_payloads_are_refused_by_the_real_allow_list(tmp_path):
    # Control: without the hole the loader refuses them, so the tests below run only
    # because of it, and test what stands behind the list.
    report = _run_probe(tmp_path, "exit_with", 3)

    assert not report.ok
    assert "GlobalRefusedError: modelkit._probes.exit_with is not on the allow-list" in (
        report.error
    )


def test_sandbox_times_out_a_load_that_sleeps(allowlist_hole, tmp_path, no_leftover_processes):
    started = time.monotonic()

    report = _run_probe(tmp_path, "sleep", 30, limits=SandboxLimits(timeout_seconds=3))

    assert not report.ok
    assert report.error == "model load timed out after 3s"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("own_session", [False, True], ids=["same-session", "own-session"])
@pytest.mark.parametrize("child_waits", [True, False], ids=["timed-out", "returned"])
def test_sandbox_kills_processes_the_model_started(
    allowlist_hole, tmp_path, shared_tmp, own_session, child_waits
):
    pid_file = shared_tmp / "grandchild.pid"
    limits = SandboxLimits(timeout_seconds=3)

    report = _run_probe(
        tmp_path, "spawn", str(pid_file), own_session, 30 if child_waits else 0, limits=limits
    )

    assert not report.ok
    if child_waits:
        assert report.error == "model load timed out after 3s"
    else:
        # The child itself finished (its "model" has no predict()) and left the process.
        assert "loaded object of type str has no predict()" in report.error, report.error
    grandchild = int(pid_file.read_text())
    left = _running(grandchild)
    if left:
        os.kill(grandchild, signal.SIGKILL)  # a failing run must not leave it behind
    assert not left, f"process {grandchild} the model started is still running"


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def test_sandbox_reports_a_crashing_load_with_its_stderr(allowlist_hole, tmp_path):
    report = _run_probe(tmp_path, "crash")

    assert not report.ok
    assert report.error.startswith("model process crashed (signal SIGSEGV):"), report.error
    # faulthandler's traceback from the child's stderr: where it crashed.
    assert "Segmentation fault" in report.error
    assert "_probes.py" in report.error and "in crash" in report.error


def test_sandbox_reports_a_load_that_exits(allowlist_hole, tmp_path):
    report = _run_probe(tmp_path, "exit_with", 3)

    assert not report.ok
    assert report.error.startswith("model process exited with code 3 before reporting a result")


def test_sandbox_reports_a_load_that_raises(write_pickle):
    path = write_pickle(Evil(bytearray, "not bytes"))  # an allowed type, a failing call

    report = _run(type("A", (), {"path": path, "fmt": "pickle"}), None)

    assert not report.ok
    assert report.error.startswith("model failed to load: TypeError: string argument")


@pytest.mark.parametrize(
    ("module", "top"),
    [
        ("registry.validation", "registry"),
        ("config.settings", "config"),
        ("core.model_process", "core"),
        ("tests", "tests"),
    ],
)
def test_sandbox_child_cannot_import_the_project(allowlist_hole, tmp_path, module, top):
    # Even with the project installed into the environment (pip install -e .), a model
    # cannot reach its code or settings; a module has no predict(), so a successful
    # import would show up as a different error.
    report = _run_probe(tmp_path, "import_module", module)

    assert not report.ok
    assert (
        f"ModuleNotFoundError: No module named {top!r} "
        "(the model sandbox cannot import the project)"
    ) in report.error, report.error


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
