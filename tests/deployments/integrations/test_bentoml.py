"""Building, serving, exporting and importing real Bentos (real BentoML, real servers)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import yaml
from filelock import FileLock

from deployments.integrations.bentoml import (
    BentoError,
    BuildError,
    bento_build,
    bento_delete,
    bento_exists,
    bento_export,
    bento_import,
    bento_tag_for,
    tag_name_for,
)
from deployments.runtime.local import LocalProcessBackend

from .conftest import FEATURES, Artifact, slot_processes


def predict(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=30, trust_env=False)


def as_objects(frame) -> list[dict]:
    return [{name: float(row[name]) for name in FEATURES} for _, row in frame.iterrows()]


def bento_yaml(home, bento_tag: str) -> dict:
    name, version = bento_tag.split(":")
    return yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())


# --------------------------------------------------------------------------- tags


def test_tag_names_are_sanitised_and_never_collide():
    assert tag_name_for("churn") == "churn"
    assert tag_name_for("fraud-v2.1_x") == "fraud-v2.1_x"
    # Sanitised names get a hash of the original, so two spellings never share a Bento.
    assert tag_name_for("Churn Model").startswith("churn-model-")
    assert tag_name_for("Churn Model") != tag_name_for("churn_model")
    assert tag_name_for("Churn Model") != tag_name_for("churn model")
    long_name = tag_name_for("x" * 200)
    assert len(long_name) <= 63 and long_name.startswith("x")
    assert tag_name_for("ÄÖÜ").startswith("model-")
    assert bento_tag_for(model_name="churn", version=7) == "churn:v7"
    with pytest.raises(ValueError, match="non-negative integer"):
        bento_tag_for(model_name="churn", version=-1)


# --------------------------------------------------------------------------- build


def test_build_packs_the_exact_model_version(home, sklearn_bento):
    assert sklearn_bento.bento_tag == "churn:v1"
    assert sklearn_bento.model_tag == "churn:v1"
    assert bento_exists(home=home, bento_tag="churn:v1")
    info = bento_yaml(home, "churn:v1")
    models = [m["tag"] for service in info["services"] for m in service["models"]]
    assert models == ["churn:v1"]  # never churn:latest
    assert info["labels"]["modelyard-model"] == "churn"
    assert "Successfully built Bento churn:v1" in sklearn_bento.log
    requirements = info["image"]["python_requirements"]
    assert "scikit-learn==" in requirements and "bentoml==1.4.39" in requirements


def test_rebuild_returns_the_existing_bento_without_building(
    home, build, sklearn_artifact, sklearn_bento
):
    bento_dir = home / "bentos" / "churn" / "v1"
    before = (bento_dir / "bento.yaml").stat().st_mtime_ns
    again = build(sklearn_artifact, model_name="churn", version=1)
    assert again.bento_tag == sklearn_bento.bento_tag
    assert "reused" in again.log
    assert again.seconds < sklearn_bento.seconds
    assert (bento_dir / "bento.yaml").stat().st_mtime_ns == before


def test_rebuild_from_a_different_artifact_is_refused(build, sklearn_bento, xgboost_artifact):
    changed = Artifact(xgboost_artifact.path, None, "xgboost", "xgboost-json", None)
    with pytest.raises(BuildError, match="built from a different artifact"):
        build(changed, model_name="churn", version=1)


@pytest.mark.parametrize(
    ("framework", "fmt", "message"),
    [
        ("tensorflow", "savedmodel", "unknown framework 'tensorflow'"),
        ("sklearn", "onnx", "cannot be served from format 'onnx'"),
    ],
)
def test_unsupported_framework_or_format_is_refused(
    home, tmp_path, sklearn_artifact, framework, fmt, message
):
    with pytest.raises(BuildError, match=message):
        bento_build(
            home=home,
            model_name="churn",
            version=99,
            artifact_path=sklearn_artifact.path,
            framework=framework,
            fmt=fmt,
            feature_names=None,
            log_path=tmp_path / "build.log",
        )


def test_build_waits_for_the_store_lock_and_fails_clearly(home, tmp_path, sklearn_artifact):
    # Another writer holds the store: the build must neither write beside it nor hang.
    with (
        FileLock(str(home / ".modelyard" / "store.lock")),
        pytest.raises(BuildError, match="stayed locked by another writer") as raised,
    ):
        bento_build(
            home=home,
            model_name="churn",
            version=50,
            artifact_path=sklearn_artifact.path,
            framework="sklearn",
            fmt="joblib",
            feature_names=None,
            log_path=tmp_path / "build.log",
            lock_timeout=2,
        )
    assert "stayed locked" in raised.value.log
    assert "stayed locked" in (tmp_path / "build.log").read_text()
    assert not bento_exists(home=home, bento_tag="churn:v50")


# --------------------------------------------------------------------------- serving


def test_served_sklearn_bento_predicts_like_the_model(
    backend, sklearn_bento, sklearn_artifact, data
):
    frame, _ = data
    rows = frame.head(25)
    handle = backend.slot_start(slot_key="it-sklearn", bento_tag=sklearn_bento.bento_tag)
    try:
        expected = sklearn_artifact.model.predict(rows).tolist()
        expected_proba = sklearn_artifact.model.predict_proba(rows)

        by_name = predict(handle.url, {"instances": as_objects(rows)})
        assert by_name.status_code == 200, by_name.text
        body = by_name.json()
        assert body["predictions"] == expected
        assert body["model_version"] == 1
        np.testing.assert_allclose(body["probabilities"], expected_proba, rtol=1e-12)

        positional = predict(handle.url, {"instances": rows.to_numpy().tolist()})
        assert positional.json()["predictions"] == expected

        without = predict(
            handle.url, {"instances": rows.to_numpy().tolist(), "probabilities": False}
        )
        assert "probabilities" not in without.json()

        missing = predict(handle.url, {"instances": [{"tenure": 1.0}]})
        assert missing.status_code == 400
        assert "lacks feature(s) monthly_charges" in missing.text
        short = predict(handle.url, {"instances": [[1.0, 2.0]]})
        assert short.status_code == 400 and "expected 4" in short.text
        empty = predict(handle.url, {"instances": []})
        assert empty.status_code == 400
        for probe in ("/readyz", "/livez"):
            assert httpx.get(handle.url + probe, trust_env=False).status_code == 200
    finally:
        backend.slot_stop(slot_key="it-sklearn")


def test_served_xgboost_bento_predicts_like_the_model(backend, build, xgboost_artifact, data):
    frame, _ = data
    rows = frame.sample(40, random_state=1)
    result = build(xgboost_artifact, model_name="churn-xgb", version=3)
    assert result.bento_tag == "churn-xgb:v3"
    handle = backend.slot_start(slot_key="it-xgboost", bento_tag=result.bento_tag)
    try:
        body = predict(handle.url, {"instances": as_objects(rows)}).json()
        assert body["predictions"] == xgboost_artifact.model.predict(rows).tolist()
        assert body["model_version"] == 3
        np.testing.assert_allclose(
            body["probabilities"], xgboost_artifact.model.predict_proba(rows), rtol=1e-6
        )
        positional = predict(handle.url, {"instances": rows.to_numpy().tolist()}).json()
        assert positional["predictions"] == body["predictions"]
    finally:
        backend.slot_stop(slot_key="it-xgboost")


def test_served_onnx_bento_predicts_like_onnxruntime(backend, build, onnx_artifact, data):
    import onnxruntime as ort

    frame, _ = data
    rows = frame.sample(40, random_state=2)
    matrix = rows.to_numpy(dtype=np.float32)
    session = ort.InferenceSession(str(onnx_artifact.path), providers=["CPUExecutionProvider"])
    labels, zipmap = session.run(None, {session.get_inputs()[0].name: matrix})
    result = build(onnx_artifact, model_name="churn-onnx", version=1)
    handle = backend.slot_start(slot_key="it-onnx", bento_tag=result.bento_tag)
    try:
        # The ONNX graph has no feature names: the declared ones key the rows.
        body = predict(handle.url, {"instances": as_objects(rows)}).json()
        assert body["predictions"] == labels.tolist()
        assert body["predictions"] == onnx_artifact.model.predict(matrix).tolist()
        np.testing.assert_allclose(
            body["probabilities"], [[row[k] for k in sorted(row)] for row in zipmap], rtol=1e-6
        )
        positional = predict(handle.url, {"instances": matrix.tolist()}).json()
        assert positional["predictions"] == labels.tolist()
    finally:
        backend.slot_stop(slot_key="it-onnx")


def test_served_lightgbm_and_skops_bentos_predict_like_their_models(
    backend, build, data, artifacts_dir
):
    import lightgbm as lgb
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    frame, target = data
    rows = frame.head(30)
    matrix = rows.to_numpy()
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7},
        lgb.Dataset(frame.to_numpy(), target),
        num_boost_round=15,
    )
    booster.save_model(artifacts_dir / "churn.txt")
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(frame.to_numpy(), target)
    skops.io.dump(forest, artifacts_dir / "churn.skops")

    lgb_bento = build(
        Artifact(artifacts_dir / "churn.txt", booster, "lightgbm", "lightgbm-text", list(FEATURES)),
        model_name="churn-lgb",
        version=1,
    )
    skops_bento = build(
        Artifact(artifacts_dir / "churn.skops", forest, "skops", "skops", list(FEATURES)),
        model_name="churn-skops",
        version=2,
    )
    lgb_handle = backend.slot_start(slot_key="it-lightgbm", bento_tag=lgb_bento.bento_tag)
    skops_handle = backend.slot_start(slot_key="it-skops", bento_tag=skops_bento.bento_tag)
    try:
        raw = booster.predict(matrix)
        body = predict(lgb_handle.url, {"instances": as_objects(rows)}).json()
        assert body["predictions"] == (raw > 0.5).astype(int).tolist()
        np.testing.assert_allclose(np.asarray(body["probabilities"])[:, 1], raw, rtol=1e-12)

        body = predict(skops_handle.url, {"instances": as_objects(rows)}).json()
        assert body["predictions"] == forest.predict(matrix).tolist()
        assert body["model_version"] == 2
        np.testing.assert_allclose(body["probabilities"], forest.predict_proba(matrix))
    finally:
        backend.slot_stop(slot_key="it-lightgbm")
        backend.slot_stop(slot_key="it-skops")


# --------------------------------------------------------------------------- export/import


def test_exported_bento_serves_from_a_fresh_home(
    home, sklearn_bento, sklearn_artifact, data, tmp_path
):
    archive = bento_export(home=home, bento_tag=sklearn_bento.bento_tag, dest=tmp_path)
    assert archive == tmp_path / "churn-v1.bento"
    assert archive.stat().st_size > 0

    other_home = tmp_path / "other-home"
    assert bento_import(home=other_home, archive=archive) == "churn:v1"
    assert bento_exists(home=other_home, bento_tag="churn:v1")
    assert bento_import(home=other_home, archive=archive) == "churn:v1"  # idempotent
    marker = json.loads((other_home / ".modelyard" / "built" / "churn" / "v1.json").read_text())
    assert marker["model_tag"] == "churn:v1"

    other = LocalProcessBackend(other_home, tmp_path / "other-state", ready_timeout=60)
    handle = other.slot_start(slot_key="imported", bento_tag="churn:v1")
    try:
        rows = data[0].head(10)
        body = predict(handle.url, {"instances": as_objects(rows)}).json()
        assert body["predictions"] == sklearn_artifact.model.predict(rows).tolist()
    finally:
        other.slot_stop(slot_key="imported")
    assert slot_processes(other.state_dir) == []

    # A rebuild in the importing home recognises the imported Bento as built.
    again = bento_build(
        home=other_home,
        model_name="churn",
        version=1,
        artifact_path=sklearn_artifact.path,
        framework="sklearn",
        fmt="joblib",
        feature_names=None,
        log_path=tmp_path / "rebuild.log",
    )
    assert "reused" in again.log

    assert bento_delete(home=other_home, bento_tag="churn:v1") is True
    assert not bento_exists(home=other_home, bento_tag="churn:v1")
    assert not (other_home / "models" / "churn" / "v1").exists()
    assert bento_delete(home=other_home, bento_tag="churn:v1") is False


def test_export_of_a_missing_bento_names_it(home, tmp_path):
    with pytest.raises(BentoError, match="Bento nothing:v1 is not in the store"):
        bento_export(home=home, bento_tag="nothing:v1", dest=tmp_path)


def test_export_never_writes_into_the_store_bento_that_slots_serve(home, sklearn_bento, tmp_path):
    """BentoML's export fills <bento>/models while it packs; a slot starting then would take
    that half-filled directory for the Bento's model store ("model not found"). The export
    therefore runs on a private copy: the store's Bento directory never changes."""
    import threading

    bento_dir = home / "bentos" / "churn" / "v1"
    before = sorted(p.name for p in bento_dir.iterdir())
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(p.name for p in bento_dir.iterdir())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        archive = bento_export(home=home, bento_tag=sklearn_bento.bento_tag, dest=tmp_path)
    finally:
        done.set()
        watcher.join()
    assert archive.stat().st_size > 0
    assert "models" not in seen, seen
    assert sorted(p.name for p in bento_dir.iterdir()) == before
    assert list((home / ".modelyard" / "tmp").iterdir()) == []  # the private copy is gone
