"""Data quality of live inputs: each check fires on rows made to break it, never on clean rows.

A real pipeline (string categoricals, zip codes that look numeric) validated in the sandbox
child decides the contract; its reference sample is the profile; live rows go through the
gateway's own sampler into Redis and the drift window computes the checks (issue 20).
"""

from __future__ import annotations

import numpy as np
import pytest
import redis
from django.utils import timezone

from gateway.sampling import samples_key
from monitoring.choices import AlertKind, DriftStatus, DriftWindowKind
from monitoring.models import Alert, DriftWindow
from monitoring.services import alerts_detect, drift_compute_now, monitoring_policy_update
from tests.monitoring.conftest import send_rows


def _window(serving_deployment, settings, version, frame) -> DriftWindow:
    redis.Redis.from_url(settings.REDIS_URL).delete(samples_key(serving_deployment.name))
    send_rows(settings, serving_deployment, version, frame)
    [window] = drift_compute_now(deployment=serving_deployment, seconds=600)
    return window


def _issues(window: DriftWindow) -> dict[str, list[str]]:
    return {f.feature: f.quality_issues for f in window.features.all() if f.quality_issues}


@pytest.fixture
def clean(pipeline_case):
    reference = pipeline_case.rows.head(60)
    return reference.loc[reference.index.repeat(3)].reset_index(drop=True)


def test_clean_rows_raise_nothing(
    pipeline_serving, pipeline_version, monitoring_redis, settings, clean
):
    window = _window(pipeline_serving, settings, pipeline_version, clean)
    assert window.data_quality["status"] == "ok", window.data_quality
    assert window.data_quality["issues"] == [] and _issues(window) == {}
    rates = {f.feature: f for f in window.features.all()}
    assert rates["age"].type_mismatch_rate == 0 and rates["income"].out_of_range_rate == 0
    assert rates["plan"].new_category_rate == 0
    alerts_detect()
    assert not Alert.objects.filter(kind=AlertKind.DATA_QUALITY).exists()


def _broken(clean, name):
    rows = clean.copy().astype(object)
    every_fourth = rows.index % 4 == 0
    if name == "missing":
        rows.loc[every_fourth, "income"] = None
    elif name == "type":
        rows.loc[every_fourth, "age"] = "forty"
    elif name == "range":
        rows.loc[every_fourth, "income"] = rows.loc[every_fourth, "income"] * 1000
    elif name == "category":
        rows.loc[every_fourth, "plan"] = "platinum"
    return rows


@pytest.mark.parametrize(
    ("broken", "feature", "words"),
    [
        ("missing", "income", "missing in 25.0% of rows"),
        ("type", "age", "of the wrong type"),
        ("range", "income", "outside the reference range"),
        ("category", "plan", "a category the reference never had"),
    ],
)
def test_each_check_fires_on_rows_made_to_break_it_and_alerts_once(
    pipeline_serving, pipeline_version, monitoring_redis, settings, clean, broken, feature, words
):
    window = _window(pipeline_serving, settings, pipeline_version, _broken(clean, broken))
    issues = _issues(window)
    assert list(issues) == [feature], issues
    assert words in issues[feature][0]
    assert window.data_quality["status"] == "breach"
    alerts_detect()
    alerts_detect()
    [alert] = Alert.objects.filter(kind=AlertKind.DATA_QUALITY)
    assert f"v{pipeline_version.number}" in alert.message and feature in alert.message
    assert alert.payload["data_quality"]["issues"]


def test_a_field_no_row_carries_and_a_field_the_contract_does_not_know(
    pipeline_serving, pipeline_version, monitoring_redis, settings, clean
):
    rows = clean.drop(columns=["visits"]).assign(coupon="SPRING")
    window = _window(pipeline_serving, settings, pipeline_version, rows)
    quality = window.data_quality
    assert quality["missing_fields"] == ["visits"]
    assert quality["extra_fields"] == ["coupon"]
    assert quality["status"] == "breach"


def test_thresholds_come_from_the_monitoring_policy(
    pipeline_serving, pipeline_version, monitoring_redis, settings, clean, make_user
):
    from accounts.choices import Role

    operator = make_user(Role.OPERATOR, "oscar")
    monitoring_policy_update(
        deployment=pipeline_serving,
        actor=operator,
        changes={"drift_thresholds": {"type_mismatch_rate": 0.5}},
    )
    window = _window(pipeline_serving, settings, pipeline_version, _broken(clean, "type"))
    assert _issues(window) == {}  # 25 % wrong is under the 50 % this deployment allows
    assert {f.feature: f.type_mismatch_rate for f in window.features.all()}["age"] == (
        pytest.approx(0.25)
    )


def test_prediction_drift_alerts_name_the_version_and_a_next_step(
    pipeline_serving, pipeline_version
):
    now = timezone.now()
    window = DriftWindow.objects.create(
        deployment=pipeline_serving,
        version=pipeline_version.number,
        kind=DriftWindowKind.SCHEDULED,
        start=now - timezone.timedelta(hours=1),
        end=now,
        live_rows=500,
        status=DriftStatus.OK,  # the inputs are fine ...
        prediction={"kind": "categorical", "status": DriftStatus.DRIFT, "js": 0.4},
    )
    alerts_detect()
    [alert] = Alert.objects.filter(kind=AlertKind.PREDICTION_DRIFT)
    assert alert.key == f"prediction-drift:{window.pk}"
    assert f"v{pipeline_version.number}" in alert.message and "retrain" in alert.message
    assert np.isclose(alert.payload["prediction"]["js"], 0.4)
