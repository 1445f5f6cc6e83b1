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
    return SimpleNamespace(models=models, reference=train.head(200), live=live, truth=value[600:])


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
    return {
        1: upload_version(
            registered_model, scientist, _trained(regressors.models["linear"], regressors.reference)
        ),
        2: upload_version(
            registered_model, scientist, _trained(regressors.models[second], regressors.reference)
        ),
    }


def _served(client, deployment, version, model, regressors, *, n, ts):
    """``n`` live rows answered by the version's own model, logged, then labelled."""
    rows = regressors.live.iloc[:n]
    predicted = model.predict(rows).tolist()
    ids = [_append(client, deployment.name, version, [p], None, ts=ts) for p in predicted]
    predictions_ingest(client, consumer="t", count=n + 10)
    truth = regressors.truth[:n]
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
