from __future__ import annotations

import pickle

import pytest

from registry.validation.formats import (
    FRAMEWORKS,
    SAFE_FORMATS,
    ArtifactFormatError,
    detect_format,
    guess_framework,
)

PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64

ALL_FORMATS = [
    "pickle",
    "joblib",
    "joblib-compressed",
    "skops",
    "xgboost-json",
    "xgboost-ubj",
    "lightgbm-text",
    "onnx",
]


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_detect_format_recognises_each_real_artifact(artifacts, name):
    artifact = artifacts[name]

    assert detect_format(artifact.path, artifact.framework) == artifact.fmt


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_guess_framework_names_the_framework_of_each_artifact(artifacts, name):
    artifact = artifacts[name]

    assert guess_framework(artifact.path) == artifact.framework


def test_safe_formats_are_exactly_the_code_free_ones():
    assert {"skops", "onnx", "xgboost-json", "xgboost-ubj", "lightgbm-text"} == SAFE_FORMATS
    assert "pickle" not in SAFE_FORMATS
    assert "joblib" not in SAFE_FORMATS


def test_detect_format_rejects_unknown_framework(artifacts):
    with pytest.raises(ArtifactFormatError, match="unknown framework 'pytorch'"):
        detect_format(artifacts["pickle"].path, "pytorch")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_detect_format_rejects_png_for_every_framework(tmp_path, framework):
    path = tmp_path / "model.bin"
    path.write_bytes(PNG_BYTES)

    with pytest.raises(ArtifactFormatError, match=f"declared framework '{framework}'"):
        detect_format(path, framework)
    assert guess_framework(path) is None


def test_detect_format_rejects_text_declared_as_sklearn(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_text("this is not a model, just some notes\n")

    with pytest.raises(ArtifactFormatError, match="not a pickle/joblib file"):
        detect_format(path, "sklearn")


def test_detect_format_rejects_empty_file(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"")

    with pytest.raises(ArtifactFormatError, match="file is empty"):
        detect_format(path, "sklearn")


@pytest.mark.parametrize("name", ["pickle", "joblib", "joblib-compressed"])
def test_detect_format_rejects_truncated_pickle(artifacts, tmp_path, name):
    data = artifacts[name].path.read_bytes()
    path = tmp_path / "truncated.pkl"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ArtifactFormatError, match="not a readable pickle/joblib file"):
        detect_format(path, "sklearn")


def test_detect_format_rejects_pickle_of_unknown_protocol(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x09" + pickle.dumps(1)[2:])

    with pytest.raises(ArtifactFormatError, match="not a pickle/joblib file"):
        detect_format(path, "sklearn")


def test_detect_format_points_to_the_framework_the_file_is_in(artifacts):
    with pytest.raises(ArtifactFormatError, match="declare framework 'onnx'") as excinfo:
        detect_format(artifacts["onnx"].path, "sklearn")
    assert "not a pickle/joblib file (declared framework 'sklearn')" in str(excinfo.value)


def test_detect_format_rejects_xgboost_model_declared_as_lightgbm(artifacts):
    with pytest.raises(ArtifactFormatError, match="not a LightGBM text model file"):
        detect_format(artifacts["xgboost-json"].path, "lightgbm")


def test_detect_format_rejects_plain_zip_declared_as_skops(tmp_path):
    import zipfile

    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no schema here")

    with pytest.raises(ArtifactFormatError, match="not a skops"):
        detect_format(path, "skops")


def test_detect_format_rejects_json_without_learner_as_xgboost(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"weights": [1, 2, 3]}')

    with pytest.raises(ArtifactFormatError, match="not an XGBoost model file"):
        detect_format(path, "xgboost")
