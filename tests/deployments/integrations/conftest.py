"""Small real models, one shared BentoML store and one serving backend for these tests.

Building is cheap (about a second) but serving costs seconds per server, so the models,
the store and the backend are module-scoped and every server is stopped at teardown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from deployments.integrations.bentoml import BuildResult, bento_build
from deployments.runtime.local import LocalProcessBackend

FEATURES = ["tenure", "monthly_charges", "support_calls", "age"]


def churn_data(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(1, 72, n).astype(float),
            "monthly_charges": rng.normal(70, 20, n),
            "support_calls": rng.poisson(2, n).astype(float),
            "age": rng.normal(45, 12, n),
        }
    )
    score = -0.05 * frame["tenure"] + 0.03 * frame["monthly_charges"] + 0.4 * frame["support_calls"]
    target = (score + rng.normal(0, 0.5, n) > score.median()).astype(int).to_numpy()
    return frame, target


@dataclass(frozen=True)
class Artifact:
    path: Path
    model: Any
    framework: str
    fmt: str
    feature_names: list[str] | None


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    return churn_data()


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def sklearn_artifact(data, artifacts_dir) -> Artifact:
    """A scikit-learn pipeline fitted on a DataFrame (so it knows its feature names)."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(frame, target)
    path = artifacts_dir / "churn.joblib"
    joblib.dump(model, path)
    return Artifact(path, model, "sklearn", "joblib", None)


@pytest.fixture(scope="module")
def xgboost_artifact(data, artifacts_dir) -> Artifact:
    import xgboost as xgb

    frame, target = data
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(frame, target)
    path = artifacts_dir / "churn.json"
    model.save_model(path)
    return Artifact(path, model, "xgboost", "xgboost-json", None)


@pytest.fixture(scope="module")
def onnx_artifact(data, artifacts_dir) -> Artifact:
    """A classifier converted with skl2onnx: one float matrix input, label + ZipMap outputs."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    frame, target = data
    matrix = frame.to_numpy(dtype=np.float32)
    model = LogisticRegression(max_iter=500).fit(matrix, target)
    path = artifacts_dir / "churn.onnx"
    path.write_bytes(to_onnx(model, matrix[:1]).SerializeToString())
    return Artifact(path, model, "onnx", "onnx", list(FEATURES))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="module")
def build(home: Path, tmp_path_factory: pytest.TempPathFactory):
    """bento_build into the shared store for one artifact."""
    logs = tmp_path_factory.mktemp("build-logs")

    def _build(artifact: Artifact, *, model_name: str = "churn", version: int = 1) -> BuildResult:
        return bento_build(
            home=home,
            model_name=model_name,
            version=version,
            artifact_path=artifact.path,
            framework=artifact.framework,
            fmt=artifact.fmt,
            feature_names=artifact.feature_names,
            log_path=logs / f"{model_name}-{version}.log",
        )

    return _build


@pytest.fixture(scope="module")
def sklearn_bento(build, sklearn_artifact) -> BuildResult:
    return build(sklearn_artifact, model_name="churn", version=1)


@pytest.fixture(scope="module")
def backend(home: Path, tmp_path_factory: pytest.TempPathFactory):
    backend = LocalProcessBackend(home, tmp_path_factory.mktemp("serving-state"), ready_timeout=60)
    yield backend
    for status in backend.slots():
        backend.slot_stop(slot_key=status.slot_key)
    assert slot_processes(backend.state_dir) == [], "a test left serving processes behind"


def slot_processes(state_dir: Path) -> list[psutil.Process]:
    """Live processes serving a slot of the backend on ``state_dir``.

    Found independently of the backend's own bookkeeping: each slot's server runs with
    BENTOML_HOME under ``state_dir``, and its workers inherit that environment.
    """
    prefix = str(Path(state_dir).resolve()) + "/"
    found = []
    for proc in psutil.process_iter():
        try:
            home = proc.environ().get("BENTOML_HOME", "")
            if home.startswith(prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
