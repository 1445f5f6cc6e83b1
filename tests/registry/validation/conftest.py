"""Small real models in every supported format, reference samples, and hostile pickles.

Everything is built once per session in a temporary directory: training takes well under
a second, and the sandbox tests dominate the run time anyway.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from tests.registry.validation.helpers import FEATURES, Artifact, probe_modelkit


@pytest.fixture(scope="session")
def training_data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(42)
    frame = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
    target = (frame["age"] + 0.5 * frame["income"] - frame["score"] > 0).astype(int).to_numpy()
    return frame, target


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("validation")


@pytest.fixture(scope="session")
def sklearn_models(training_data: tuple[pd.DataFrame, np.ndarray]) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    frame, target = training_data
    return {
        "logreg": LogisticRegression().fit(frame, target),
        "forest": RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(
            frame, target
        ),
    }


@pytest.fixture(scope="session")
def artifacts(
    workdir: Path,
    training_data: tuple[pd.DataFrame, np.ndarray],
    sklearn_models: dict[str, Any],
) -> dict[str, Artifact]:
    """One artifact per supported format, keyed by a short name."""
    import lightgbm
    import skops.io
    import xgboost
    from skl2onnx import to_onnx

    frame, target = training_data
    logreg, forest = sklearn_models["logreg"], sklearn_models["forest"]
    out: dict[str, Artifact] = {}

    path = workdir / "logreg.pkl"
    path.write_bytes(pickle.dumps(logreg, protocol=5))
    out["pickle"] = Artifact(path, "sklearn", "pickle", logreg)

    path = workdir / "forest.joblib"
    joblib.dump(forest, path)
    out["joblib"] = Artifact(path, "sklearn", "joblib", forest)

    path = workdir / "forest-compressed.joblib"
    joblib.dump(forest, path, compress=("xz", 3))
    out["joblib-compressed"] = Artifact(path, "sklearn", "joblib", forest)

    path = workdir / "forest.skops"
    skops.io.dump(forest, path)
    out["skops"] = Artifact(path, "skops", "skops", forest)

    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgboost.DMatrix(frame, target),
        num_boost_round=5,
    )
    for suffix, fmt in (("json", "xgboost-json"), ("ubj", "xgboost-ubj")):
        path = workdir / f"booster.{suffix}"
        booster.save_model(path)
        out[fmt] = Artifact(path, "xgboost", fmt, booster)

    lgb_booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(frame, target),
        num_boost_round=5,
    )
    path = workdir / "lgbm.txt"
    lgb_booster.save_model(path)
    out["lightgbm-text"] = Artifact(path, "lightgbm", "lightgbm-text", lgb_booster)

    onnx_model = to_onnx(
        logreg, frame.to_numpy(np.float32)[:1], options={"zipmap": False}, target_opset=17
    )
    path = workdir / "logreg.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    out["onnx"] = Artifact(path, "onnx", "onnx", onnx_model)
    return out


@pytest.fixture(scope="session")
def reference_frame(training_data: tuple[pd.DataFrame, np.ndarray]) -> pd.DataFrame:
    frame, target = training_data
    # Reference data usually carries the label too; the sandbox must ignore it.
    return frame.head(40).assign(label=target[:40])


@pytest.fixture(scope="session")
def reference_csv(workdir: Path, reference_frame: pd.DataFrame) -> Path:
    path = workdir / "reference.csv"
    reference_frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def features_csv(workdir: Path, reference_frame: pd.DataFrame) -> Path:
    path = workdir / "features.csv"
    reference_frame[FEATURES].to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def reference_parquet(workdir: Path, reference_frame: pd.DataFrame) -> Path:
    path = workdir / "reference.parquet"
    reference_frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def write_pickle(tmp_path: Path):
    """Write ``obj`` with pickle or joblib (optionally compressed); return the path."""

    def write(obj: Any, *, how: str = "pickle", compress: Any = 0) -> Path:
        path = tmp_path / f"artifact-{how}-{time.monotonic_ns()}.bin"
        if how == "joblib":
            joblib.dump(obj, path, compress=compress)
        else:
            path.write_bytes(pickle.dumps(obj, protocol=4))
        return path

    return write


@pytest.fixture
def no_leftover_processes():
    """Asserts the test leaves no child process of this test process running."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    after = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not after


@pytest.fixture(scope="session")
def probe_modelkit_dir() -> Iterator[Path]:
    """A modelkit copy whose allow-list admits the test payloads (``helpers.probe_modelkit``),
    in a folder of its own under the system temp dir that the model user can read."""
    folder = Path(tempfile.mkdtemp(prefix="modelyard-probe-modelkit-"))
    try:
        yield probe_modelkit(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def allowlist_hole(probe_modelkit_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The validation child imports the probe copy of modelkit instead of the real one."""
    from registry.validation import sandbox

    monkeypatch.setattr(sandbox, "MODELKIT_DIR", probe_modelkit_dir)
    return probe_modelkit_dir
