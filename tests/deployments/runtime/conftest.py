"""A real BentoML store with two working Bentos and one whose model cannot load.

Built once per module (building takes about a second each); every test gets its own
backend state dir, and whatever a test leaves running is stopped at its end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest

from deployments.integrations.bentoml import bento_build
from deployments.runtime.local import LocalProcessBackend

FEATURES = ["x0", "x1", "x2"]


@pytest.fixture(scope="module")
def training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(200, 3))
    target = (matrix @ np.array([1.0, -2.0, 0.5]) > 0).astype(int)
    return matrix, target


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, training_data) -> dict:
    """Home with bentos ``scorer:v1`` and ``scorer:v2`` (different models), ``broken:v1``."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    home = tmp_path_factory.mktemp("runtime-home")
    work = tmp_path_factory.mktemp("runtime-artifacts")
    matrix, target = training_data
    models = {
        1: LogisticRegression().fit(matrix, target),
        2: DecisionTreeClassifier(max_depth=2, random_state=0).fit(matrix, target),
    }
    tags = {}
    for version, model in models.items():
        joblib.dump(model, work / f"v{version}.joblib")
        tags[version] = bento_build(
            home=home,
            model_name="scorer",
            version=version,
            artifact_path=work / f"v{version}.joblib",
            framework="sklearn",
            fmt="joblib",
            feature_names=list(FEATURES),
            log_path=work / "build.log",
        ).bento_tag
    # Not a joblib file: the build succeeds (models are never loaded while building), the
    # service's __init__ raises in the server, and BentoML restarts it forever.
    (work / "broken.joblib").write_bytes(b"this is not a model")
    broken = bento_build(
        home=home,
        model_name="broken",
        version=1,
        artifact_path=work / "broken.joblib",
        framework="sklearn",
        fmt="joblib",
        feature_names=None,
        log_path=work / "build.log",
    ).bento_tag
    return {"home": home, "v1": tags[1], "v2": tags[2], "broken": broken, "models": models}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "serving-state"


@pytest.fixture
def make_backend(store, state_dir):
    """Backend instances on one state dir (a new instance = a restarted supervisor)."""

    def make(**options) -> LocalProcessBackend:
        options.setdefault("ready_timeout", 60)
        return LocalProcessBackend(store["home"], state_dir, **options)

    yield make
    # Whatever a test left running (also after a failure) is stopped here, by PID.
    cleanup = make()
    for status in cleanup.slots():
        cleanup.slot_stop(slot_key=status.slot_key, timeout=5)
    leftovers = serving_processes(state_dir)
    for proc in leftovers:
        proc.kill()
    assert leftovers == [], f"test left serving processes: {[p.pid for p in leftovers]}"


@pytest.fixture
def backend(make_backend) -> LocalProcessBackend:
    return make_backend()


def serving_processes(state_dir: Path) -> list[psutil.Process]:
    """Live processes serving a slot of the backend on ``state_dir``.

    Found independently of the backend's bookkeeping: each slot's server runs with
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
