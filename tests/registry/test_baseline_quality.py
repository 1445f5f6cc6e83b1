"""The reference labels at upload give a version its baseline quality.

Real models trained here (a DataFrame pipeline with string labels, a model fitted on a numpy
matrix, a regressor), validated through the sandbox; every baseline is checked against
scikit-learn's metrics computed offline on the same labelled reference rows.
"""

from __future__ import annotations

import io

import joblib
import numpy as np
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from sklearn import metrics

from monitoring.services.drift_profiles import drift_profile_ensure
from registry import services
from registry.choices import VersionState
from registry.models import ModelVersion
from registry.services.versions import VersionMetadata
from tests.registry.helpers import upload_payload

pytestmark = pytest.mark.django_db
URL = "/api/v1/models/churn/versions/"


def _joblib(model) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def _upload(model, scientist, artifact: bytes, reference: bytes, *, name="ref.csv", **metadata):
    version = services.version_upload(
        model=model,
        uploader=scientist,
        artifact=SimpleUploadedFile("m.joblib", artifact),
        framework="sklearn",
        metadata=VersionMetadata(**metadata),
        reference=SimpleUploadedFile(name, reference),
    )
    return services.version_validate(version_id=version.pk)


@pytest.fixture(scope="module")
def string_label_classifier():
    """A DataFrame pipeline (a category and numbers) whose classes are "no" and "yes"."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "plan": rng.choice(["basic", "plus", "pro"], n),
            "visits": rng.poisson(3, n).astype(float),
        }
    )
    score = (frame["age"] - 40) / 10 + (frame["plan"] == "pro") + rng.normal(0, 0.7, n)
    target = np.where(score > 0.3, "yes", "no")
    model = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            (StandardScaler(), ["age", "visits"]),
        ),
        LogisticRegression(max_iter=300),
    ).fit(frame, target)
    reference = frame.head(150).copy()
    reference["churned"] = target[:150]
    reference.loc[reference.index % 5 == 0, "churned"] = None  # unlabelled rows are left out
    return model, reference


def test_string_label_classifier_baseline_equals_sklearn_offline(
    registered_model, scientist, string_label_classifier
):
    model, reference = string_label_classifier
    version = _upload(
        registered_model,
        scientist,
        _joblib(model),
        reference.to_csv(index=False).encode(),
        label_column="churned",
    )
    assert version.state == VersionState.VALIDATED, version.validation_report
    # The label column is never a feature: not in the contract, the schema or the smoke rows.
    assert [f["name"] for f in version.contract["features"]] == ["age", "plan", "visits"]
    assert "churned" not in {c["name"] for c in version.reference_schema}
    assert all("churned" not in row for row in version.validation_report["load"]["smoke_rows"])

    labelled = reference[reference["churned"].notna()]
    features = labelled.drop(columns=["churned"])
    truth = labelled["churned"].to_numpy()
    proba = model.predict_proba(features)
    baseline = version.baseline_quality
    assert baseline["label_column"] == "churned" and baseline["task"] == "classification"
    assert baseline["labelled_rows"] == baseline["labelled"] == len(labelled) == 120
    assert baseline["classes"] == ["no", "yes"] and baseline["unknown_label"] == 0
    found = baseline["metrics"]
    assert found["accuracy"]["value"] == pytest.approx(
        metrics.accuracy_score(truth, model.predict(features))
    )
    low, high = found["accuracy"]["ci95"]
    assert low < found["accuracy"]["value"] < high
    assert found["f1_macro"] == pytest.approx(
        metrics.f1_score(truth, model.predict(features), average="macro")
    )
    assert found["roc_auc"] == pytest.approx(metrics.roc_auc_score(truth == "yes", proba[:, 1]))
    assert found["log_loss"] == pytest.approx(metrics.log_loss(truth, proba, labels=["no", "yes"]))
    assert (
        found["confusion_matrix"]
        == metrics.confusion_matrix(truth, model.predict(features), labels=["no", "yes"]).tolist()
    )
    # The report says what the baseline was computed on, not the rows' answers.
    assert version.validation_report["baseline"]["labelled_rows"] == 120
    assert version.validation_report["load"]["labelled"] is None

    # Drift profiles the features only.
    profile = drift_profile_ensure(version=version)
    assert {f["name"] for f in profile.features} == {"age", "plan", "visits"}


def test_numpy_fitted_model_takes_its_features_from_the_header_without_the_labels(
    registered_model, scientist
):
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(240, 3))
    target = np.digitize(matrix[:, 0] + 0.5 * matrix[:, 1], [-0.5, 0.5])  # classes 0, 1, 2
    model = RandomForestClassifier(n_estimators=15, random_state=0).fit(matrix, target)
    # The label column sits between the features: the header minus it is the model's order.
    reference = pd.DataFrame({"a": matrix[:, 0], "label": target, "b": matrix[:, 1]})
    reference["c"] = matrix[:, 2]
    version = _upload(
        registered_model,
        scientist,
        _joblib(model),
        reference.to_csv(index=False).encode(),
        label_column="label",
    )
    assert version.state == VersionState.VALIDATED, version.validation_report
    assert version.contract["names_source"] == "reference"
    assert [f["name"] for f in version.contract["features"]] == ["a", "b", "c"]

    features = reference[["a", "b", "c"]].to_numpy()
    proba = model.predict_proba(features)
    found = version.baseline_quality["metrics"]
    assert version.baseline_quality["labelled"] == 240
    assert found["accuracy"]["value"] == pytest.approx(
        metrics.accuracy_score(target, model.predict(features))
    )
    assert found["roc_auc"] == pytest.approx(
        metrics.roc_auc_score(target, proba, multi_class="ovr", labels=[0, 1, 2])
    )
    assert found["log_loss"] == pytest.approx(metrics.log_loss(target, proba, labels=[0, 1, 2]))
    assert [c["support"] for c in found["per_class"]] == np.bincount(target).tolist()


def test_regressor_baseline_from_parquet_labels_equals_sklearn_offline(registered_model, scientist):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"rooms": rng.integers(1, 6, 200).astype(float)})
    frame["area"] = frame["rooms"] * 25 + rng.normal(0, 8, 200)
    price = 1000 * frame["rooms"] + 30 * frame["area"] + rng.normal(0, 500, 200)
    model = Ridge().fit(frame, price)
    reference = frame.assign(price=price)
    reference.loc[reference.index >= 180, "price"] = np.nan
    buffer = io.BytesIO()
    reference.to_parquet(buffer)
    version = _upload(
        registered_model,
        scientist,
        _joblib(model),
        buffer.getvalue(),
        name="ref.parquet",
        label_column="price",
    )
    assert version.state == VersionState.VALIDATED, version.validation_report
    labelled = reference.head(180)
    predicted = model.predict(labelled[["rooms", "area"]])
    baseline = version.baseline_quality
    assert baseline["task"] == "regression" and baseline["labelled"] == 180
    found = baseline["metrics"]
    assert found["mae"]["value"] == pytest.approx(
        metrics.mean_absolute_error(labelled["price"], predicted)
    )
    assert found["rmse"] == pytest.approx(
        metrics.root_mean_squared_error(labelled["price"], predicted)
    )
    assert found["r2"] == pytest.approx(metrics.r2_score(labelled["price"], predicted))


def test_reference_without_label_column_gives_no_baseline_and_changes_nothing(
    registered_model, scientist, sklearn_model
):
    version = _upload(
        registered_model, scientist, sklearn_model.artifact, sklearn_model.reference_csv
    )
    assert version.state == VersionState.VALIDATED
    assert version.baseline_quality == {} and version.reference_label_column == ""
    assert "baseline" not in version.validation_report
    assert [f["name"] for f in version.contract["features"]] == [
        "age",
        "income",
        "visits",
        "score",
    ]


def test_model_that_takes_the_label_column_as_a_feature_is_invalid(registered_model, scientist):
    from sklearn.linear_model import LinearRegression

    frame = pd.DataFrame({"x": np.arange(50.0), "y": np.arange(50.0) * 2})
    model = LinearRegression().fit(frame, frame["y"])
    version = _upload(
        registered_model,
        scientist,
        _joblib(model),
        frame.to_csv(index=False).encode(),
        label_column="y",
    )
    assert version.state == VersionState.INVALID
    assert "label_column 'y' is one of the model's features" in version.validation_report["error"]
    assert version.baseline_quality == {}


@pytest.mark.parametrize(
    ("metadata", "reference", "text"),
    [
        ({"label_column": "nope"}, True, "is not a column of the reference data"),
        ({"label_column": "age", "feature_names": ["age", "x"]}, True, "declared feature_names"),
        ({"label_column": "score"}, False, "upload reference data"),
        ({"label_column": ""}, True, "blank"),
        ({"label_column": ["score"]}, True, "label_column"),
        ({"label_column": "empty"}, "empty", "holds no labels"),
    ],
)
def test_bad_label_column_is_a_400_naming_it_and_writes_nothing(
    metadata,
    reference,
    text,
    registered_model,
    scientist,
    api_for,
    sklearn_model,
    storage_snapshot,
):
    data = sklearn_model.reference_csv
    if reference == "empty":
        data = sklearn_model.frame.head(20).assign(empty=None).to_csv(index=False).encode()
    payload = upload_payload(
        sklearn_model.artifact, metadata=metadata, reference=data if reference else None
    )
    response = api_for(scientist).post(URL, payload, format="multipart")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert "label_column" in error["message"] and text in error["message"]
    assert storage_snapshot() == set()
    assert ModelVersion.objects.count() == 0


def test_version_api_shows_the_baseline(
    registered_model, scientist, api_for, string_label_classifier
):
    model, reference = string_label_classifier
    version = _upload(
        registered_model,
        scientist,
        _joblib(model),
        reference.to_csv(index=False).encode(),
        label_column="churned",
    )
    body = api_for(scientist).get(f"{URL}{version.number}/").json()
    assert body["reference_label_column"] == "churned"
    assert (
        body["baseline_quality"]["metrics"]["accuracy"]
        == (version.baseline_quality["metrics"]["accuracy"])
    )
