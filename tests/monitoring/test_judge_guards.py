"""The canary judge's guard metrics on a deployment's own data: live accuracy and MAE from
labelled predictions (the prediction log and the labels API's service), cost per prediction
from resource samples, drift from the gateway's sample stream. Each fails a worse canary,
passes an equal one, and is "not yet" without enough data on an arm."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

from gateway.metrics import MetricsRecorder
from monitoring.services import labels_ingest, predictions_ingest
from monitoring.services.judge import canary_judge
from registry.models import ModelVersion
from tests.models import training_frame
from tests.monitoring.conftest import flush, minute_ago, serve_traffic, stream_samples, utc
from tests.monitoring.test_guards_and_cost import _sample
from tests.monitoring.test_quality import _append, _contract

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_log(db):
    # The prediction log is unmanaged (partitioned, raw SQL): Django's flush leaves it.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_prediction")


def _judge(deployment, policy, *, start=None, end=None):
    end = end or timezone.now()
    return canary_judge(
        deployment=deployment,
        baseline_version=1,
        canary_version=2,
        start=start or end - timedelta(minutes=5),
        end=end,
        policy=policy,
    )


def _metric(judgement, name):
    (metric,) = [m for m in judgement.metrics if m.metric == name]
    return metric


def _typed(versions, contract):
    for version in versions.values():
        ModelVersion.objects.filter(pk=version.pk).update(contract=contract)


def _labelled(client, deployment, version, truth, predicted, probabilities=None):
    ids = [
        _append(client, deployment.name, version, [p], probabilities, ts=time.time() - 30)
        for p in predicted
    ]
    predictions_ingest(client, consumer="t", count=len(ids) + 10)
    labels_ingest(
        deployment=deployment,
        labels=[{"id": i, "label": t} for i, t in zip(ids, truth, strict=True)],
    )


def _classified(rng, n, accuracy):
    truth = rng.choice(["no", "yes"], size=n)
    right = rng.random(n) < accuracy
    return truth.tolist(), np.where(right, truth, np.where(truth == "yes", "no", "yes")).tolist()


@pytest.mark.parametrize(
    ("canary_accuracy", "canary_labels", "verdict"),
    [(0.6, 300, "fail"), (0.89, 300, "pass"), (0.6, 40, "not_yet")],
)
def test_accuracy_fails_a_canary_whose_labels_are_worse(
    monitoring_redis, deployment, versions, canary_accuracy, canary_labels, verdict
):
    _typed(versions, _contract("label", ["no", "yes"]))
    rng = np.random.default_rng(3)
    _labelled(monitoring_redis, deployment, 1, *_classified(rng, 300, 0.9), [[0.5, 0.5]])
    _labelled(
        monitoring_redis,
        deployment,
        2,
        *_classified(rng, canary_labels, canary_accuracy),
        [[0.5, 0.5]],
    )
    accuracy = _metric(_judge(deployment, {"max_accuracy_drop": 0.05}), "accuracy")
    assert accuracy.verdict == verdict, accuracy
    if verdict != "not_yet":
        assert accuracy.baseline == pytest.approx(0.9, abs=0.06)


@pytest.mark.parametrize(
    ("canary_noise", "canary_labels", "verdict"),
    [(20.0, 200, "fail"), (5.0, 200, "pass"), (20.0, 50, "not_yet")],
)
def test_mae_fails_a_regressor_canary_that_is_further_off(
    monitoring_redis, deployment, versions, canary_noise, canary_labels, verdict
):
    _typed(versions, _contract("value"))
    rng = np.random.default_rng(4)
    truth = rng.normal(100, 15, 200)
    _labelled(
        monitoring_redis, deployment, 1, truth.tolist(), (truth + rng.normal(0, 5, 200)).tolist()
    )
    truth = rng.normal(100, 15, canary_labels)
    _labelled(
        monitoring_redis,
        deployment,
        2,
        truth.tolist(),
        (truth + rng.normal(0, canary_noise, canary_labels)).tolist(),
    )
    mae = _metric(_judge(deployment, {"max_mae_increase": 2.0}), "mae")
    assert mae.verdict == verdict, mae
    if verdict == "fail":
        assert mae.canary - mae.baseline > 2.0  # ~16 against ~4: normal noise's 0.8 sigma


def _served(deployment, settings, start):
    """1,000 answered requests per version in the minute after ``start`` (the roll-ups)."""
    from monitoring.services.rollups import metrics_rollup

    recorder = MetricsRecorder()
    for version in (1, 2):
        serve_traffic(
            recorder,
            deployment,
            version,
            requests=1_000,
            errors=0,
            median_ms=10.0,
            now=start.timestamp() + 30,
            seed=version,
        )
    flush(recorder, settings.REDIS_URL)
    metrics_rollup()


@pytest.mark.parametrize(("canary_cpu", "verdict"), [(30.0, "fail"), (11.0, "pass")])
def test_cost_per_prediction_fails_a_canary_that_costs_more_than_the_tolerance(
    monitoring_redis, deployment, settings, canary_cpu, verdict
):
    start = utc(minute_ago(3) // 60 * 60)
    _served(deployment, settings, start)
    for seconds, cpu_blue, cpu_green in ((0, 0.0, 0.0), (60, 10.0, canary_cpu)):
        at = start + timedelta(seconds=seconds)
        _sample(deployment, "blue", 1, cpu_blue, 0.2, at)
        _sample(deployment, "green", 2, cpu_green, 0.2, at)
    judged = _judge(
        deployment, {"max_cost_increase": 0.5}, start=start, end=start + timedelta(minutes=2)
    )
    cost = _metric(judged, "cost_per_prediction")
    assert cost.verdict == verdict, cost
    assert cost.canary > cost.baseline > 0
    # The tolerance is relative: half the baseline's cost per prediction.
    assert cost.tolerance == pytest.approx(0.5 * cost.baseline)


def test_cost_without_resource_samples_is_not_yet(monitoring_redis, deployment, settings):
    start = utc(minute_ago(3) // 60 * 60)
    _served(deployment, settings, start)
    judged = _judge(
        deployment, {"max_cost_increase": 0.5}, start=start, end=start + timedelta(minutes=2)
    )
    assert _metric(judged, "cost_per_prediction").verdict == "not_yet"


def _sampled(settings, deployment, version, *, shift_age, seed):
    frame, _ = training_frame(n=600, seed=seed)
    frame["age"] = frame["age"] + shift_age
    stream_samples(
        settings, deployment.name, version, frame.to_dict(orient="records"), per_request=50
    )


@pytest.mark.parametrize(("canary_shift", "verdict"), [(40.0, "fail"), (0.0, "pass")])
def test_drift_fails_a_canary_whose_requests_drift_further_from_its_reference(
    monitoring_redis, deployment, settings, canary_shift, verdict
):
    start = timezone.now() - timedelta(seconds=30)
    _sampled(settings, deployment, 1, shift_age=0.0, seed=7)
    _sampled(settings, deployment, 2, shift_age=canary_shift, seed=8)
    drift = _metric(
        _judge(deployment, {"max_drift_increase": 0.2}, start=start, end=timezone.now()), "drift"
    )
    assert drift.verdict == verdict, drift
    assert drift.baseline is not None and drift.baseline < 0.2


def test_drift_without_samples_is_not_yet(monitoring_redis, deployment):
    drift = _metric(_judge(deployment, {"max_drift_increase": 0.2}), "drift")
    assert drift.verdict == "not_yet"


def test_the_plan_takes_the_guard_tolerances_and_refuses_a_negative_one():
    from core.errors import InvalidInput
    from deployments.services.progressive import canary_plan_clean

    plan = canary_plan_clean(
        {"judge": {"max_mae_increase": 2, "max_cost_increase": 0.5, "max_drift_increase": 0.2}}
    )
    assert plan["judge"] == {
        "max_mae_increase": 2.0,
        "max_cost_increase": 0.5,
        "max_drift_increase": 0.2,
    }
    with pytest.raises(InvalidInput) as refused:
        canary_plan_clean({"judge": {"max_cost_increase": -1}})
    assert "max_cost_increase" in str(refused.value.details or refused.value)
