"""The regression guard (issue 20): ``max_mae_increase`` rolls back a regressor whose live mean
absolute error, over labelled predictions, rose above the previous version's by more than the
policy allows; one as good, or too few labels, trips nothing.

Real regressors trained here (scikit-learn), uploaded and validated in the sandbox child (which
decides their contract: a value, not classes); their own predictions go through the stream and
the ingester into the prediction log, the truth arrives as labels, and the guard's figures are
checked against scikit-learn's on the same pairs.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta
from types import SimpleNamespace

import joblib
import numpy as np
import pytest
from django.utils import timezone
from sklearn import metrics

from deployments.models import Deployment
from monitoring.choices import AlertKind, GuardAction, GuardRule
from monitoring.models import Alert
from monitoring.services import (
    alerts_detect,
    guards_check_deployment,
    labels_ingest,
    predictions_ingest,
)
from monitoring.services.guards import guard_evaluate
from registry.services.versions import VersionMetadata
from tests.models import training_frame
from tests.monitoring.test_quality import _append
from tests.registry.helpers import upload_version


def _target(frame, rng):
    return (
        3 * frame["age"]
        + frame["income"] / 1000
        + 20 * frame["score"]
        + rng.normal(0, 5, len(frame))
    ).to_numpy()


@pytest.fixture(scope="module")
def regressors():
    """A linear model, a second one fitted on other rows (as good), and one that always
    answers the mean (much worse), with live rows and their truth."""
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(21)
    frame, _ = training_frame(n=900, seed=21)
    value = _target(frame, rng)
    train, live = frame.iloc[:600], frame.iloc[600:]
    models = {
        "linear": LinearRegression().fit(train.iloc[:400], value[:400]),
        "as_good": LinearRegression().fit(train.iloc[200:], value[200:600]),
        "worse": DummyRegressor(strategy="mean").fit(train, value[:600]),
    }
    return SimpleNamespace(
        models=models, reference=train.head(200), live=live, truth=value[600:], value=value
    )


def _trained(model, reference):
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return SimpleNamespace(
        artifact=buffer.getvalue(), reference_csv=reference.to_csv(index=False).encode()
    )


@pytest.fixture
def versions(request, registered_model, scientist, regressors):
    """Overrides the suite's classifiers: v1 the linear model, v2 the one the test names
    (the ``deployment`` fixture serves v2 baking, v1 warm)."""
    second = getattr(request, "param", "worse")
    # "as_good_labelled": v2's reference carries its truth in a label column, which gives
    # v2 a baseline of its own (ModelVersion.baseline_quality).
    labelled = second.endswith("_labelled")
    second = second.removesuffix("_labelled")
    reference = regressors.reference.assign(price=regressors.value[: len(regressors.reference)])
    return {
        1: upload_version(
            registered_model, scientist, _trained(regressors.models["linear"], regressors.reference)
        ),
        2: upload_version(
            registered_model,
            scientist,
            _trained(regressors.models[second], reference if labelled else regressors.reference),
            metadata=VersionMetadata(label_column="price") if labelled else None,
        ),
    }


def _served(client, deployment, version, model, regressors, *, n, ts, shift=0.0):
    """``n`` live rows answered by the version's own model, logged, then labelled (the truth
    moved by ``shift``: the world changed, the model did not)."""
    rows = regressors.live.iloc[:n]
    predicted = model.predict(rows).tolist()
    ids = [_append(client, deployment.name, version, [p], None, ts=ts) for p in predicted]
    predictions_ingest(client, consumer="t", count=n + 10)
    truth = regressors.truth[:n] + shift
    labels_ingest(
        deployment=deployment,
        labels=[{"id": i, "label": float(t)} for i, t in zip(ids, truth, strict=True)],
    )
    return truth, predicted


@pytest.mark.parametrize(
    ("versions", "labels", "rolled_back"),
    [("worse", 200, True), ("as_good", 200, False), ("worse", 30, False)],
    indirect=["versions"],
)
def test_the_mae_guard_rolls_back_a_regressor_whose_errors_grow(
    monitoring_redis, deployment, versions, regressors, request, labels, rolled_back
):
    assert versions[2].contract["output"]["kind"] == "value"  # validation says: a regressor
    # The accuracy rule too, as a policy shared by classifiers and regressors would: it
    # does not apply to a regressor and trips nothing.
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_mae_increase": 2.0, "max_accuracy_drop": 0.0, "min_labels": 100}
    )
    deployment.refresh_from_db()
    second = request.node.callspec.params["versions"]
    day_before = (timezone.now() - timedelta(days=1)).timestamp()
    before_truth, before_predicted = _served(
        monitoring_redis,
        deployment,
        1,
        regressors.models["linear"],
        regressors,
        n=300,
        ts=day_before,
    )
    truth, predicted = _served(
        monitoring_redis,
        deployment,
        2,
        regressors.models[second],
        regressors,
        n=labels,
        ts=time.time() - 30,
    )

    breach = guards_check_deployment(deployment=deployment)

    if not rolled_back:
        assert breach is None
        return
    assert breach is not None and breach.rules == [GuardRule.MAE]
    assert "accuracy" not in breach.evidence
    assert breach.action == GuardAction.ROLLED_BACK and breach.rollback.version.number == 1
    figures = breach.evidence["mae"]
    assert figures["value"] == pytest.approx(metrics.mean_absolute_error(truth, predicted))
    assert figures["baseline"] == pytest.approx(
        metrics.mean_absolute_error(before_truth, before_predicted)
    )
    assert (figures["labelled"], figures["baseline_labelled"]) == (labels, 300)
    assert figures["value"] > figures["baseline"] + 2.0 and figures["threshold"] == 2.0
    low, high = figures["ci95"]
    assert low < figures["value"] < high

    # The breach asks for a retrain, naming the limit it crossed in the metric's own unit.
    alerts_detect()
    [alert] = Alert.objects.filter(kind=AlertKind.RETRAIN_REQUESTED)
    assert alert.payload["metric"] == "mae" and alert.payload["version"] == 2
    assert alert.payload["threshold"] == pytest.approx(figures["baseline"] + 2.0)
    assert alert.payload["source"]["policy"] == {"max_mae_increase": 2.0}
    assert "mae" in alert.message and "v2" in alert.message


@pytest.mark.parametrize(
    ("versions", "shift", "rolled_back"),
    [("as_good_labelled", 25.0, True), ("as_good_labelled", 0.0, False)],
    indirect=["versions"],
)
def test_the_mae_guard_falls_back_to_the_reference_labels_when_the_previous_has_none(
    monitoring_redis, deployment, versions, regressors, shift, rolled_back
):
    """v1 has no labelled predictions at all: v2's MAE on its labelled reference rows, from
    validation, is the baseline instead, and the evidence says so."""
    baseline = versions[2].baseline_quality
    assert baseline["label_column"] == "price" and baseline["labelled"] == 200
    assert versions[1].baseline_quality == {}
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_mae_increase": 2.0, "min_labels": 100}
    )
    deployment.refresh_from_db()
    truth, predicted = _served(
        monitoring_redis,
        deployment,
        2,
        regressors.models["as_good"],
        regressors,
        n=150,
        ts=time.time() - 30,
        shift=shift,
    )
    now = timezone.now()
    breached, evidence = guard_evaluate(
        deployment=deployment,
        version_number=2,
        start=now - timedelta(minutes=5),
        end=now,
        baseline_version=1,
    )
    figures = evidence["mae"]
    assert figures["baseline_source"] == "reference labels" and figures["label_column"] == "price"
    assert figures["baseline"] == baseline["metrics"]["mae"]["value"]
    assert (figures["baseline_version"], figures["baseline_labelled"]) == (2, 200)
    assert figures["value"] == pytest.approx(metrics.mean_absolute_error(truth, predicted))
    assert (breached == [GuardRule.MAE]) is rolled_back

    breach = guards_check_deployment(deployment=deployment)
    assert (breach is not None) is rolled_back
    if rolled_back:
        assert breach.rollback.version.number == 1
        assert breach.evidence["mae"]["baseline_source"] == "reference labels"
