"""The dashboard's quality panels: live accuracy over time, the confusion matrix, the quality and
data-quality tables (issue 20), from the real prediction log, labels and drift windows."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import numpy as np
from django.db import connection
from django.utils import timezone

from accounts.choices import Role
from frontend import charts
from gateway.prediction_log import PREDICTIONS_STREAM, entry_fields, inference_id_new
from monitoring import selectors as data
from monitoring.choices import DriftStatus, DriftWindowKind, FeatureKind
from monitoring.models import DriftFeature, DriftWindow
from monitoring.services import labels_ingest, predictions_ingest
from registry.models import ModelVersion
from tests.frontend.test_operations_pages import ops  # noqa: F401 - fixture
from tests.monitoring.conftest import monitoring_redis, private_redis_url  # noqa: F401

CONTRACT = {"features": [], "output": {"kind": "label", "classes": ["no", "yes"]}}


def _labelled(client, deployment, version, n, accuracy, ts):
    rng = np.random.default_rng(version)
    truth = rng.choice(["no", "yes"], size=n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, truth, np.where(truth == "yes", "no", "yes"))
    ids = []
    for value in predicted.tolist():
        inference_id = inference_id_new()
        ids.append(inference_id)
        answer = json.dumps({"predictions": [value], "model_version": version})
        client.xadd(
            PREDICTIONS_STREAM,
            entry_fields(
                deployment=deployment.name,
                version=version,
                inference_id=inference_id,
                ts=ts,
                answer=answer,
            ),
        )
    predictions_ingest(client, consumer="t", count=n + 10)
    labels_ingest(
        deployment=deployment,
        labels=[{"id": i, "label": str(t)} for i, t in zip(ids, truth, strict=True)],
    )
    return int((truth == predicted).sum())


def test_the_dashboard_shows_live_quality_and_data_quality(ops, login, monitoring_redis):  # noqa: F811
    deployment = ops["deployment"]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_prediction")
    ModelVersion.objects.filter(model=deployment.model).update(contract=CONTRACT)
    right = _labelled(monitoring_redis, deployment, 2, 120, 0.8, time.time() - 600)
    _labelled(monitoring_redis, deployment, 1, 60, 0.9, time.time() - 7200)
    now = timezone.now()
    window = DriftWindow.objects.create(
        deployment=deployment,
        version=2,
        kind=DriftWindowKind.SCHEDULED,
        start=now - timedelta(hours=1),
        end=now,
        live_rows=200,
        status=DriftStatus.OK,
        data_quality={
            "status": "breach",
            "rows": 200,
            "missing_fields": ["visits"],
            "extra_fields": [],
            "issues": ["age: 25.0% of rows of the wrong type (allowed 1.0%)"],
        },
    )
    DriftFeature.objects.create(
        window=window,
        feature="age",
        kind=FeatureKind.NUMERIC,
        status=DriftStatus.OK,
        live_rows=200,
        missing_rate=0.0,
        type_mismatch_rate=0.25,
        quality_issues=["25.0% of rows of the wrong type (allowed 1.0%)"],
    )

    page = login(ops["operator"]).get(f"/deployments/{deployment.name}/?window=24h")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Live quality per version" in html
    assert f"{right / 120:.1%}" in html  # v2's accuracy, as scikit-learn counts it
    assert 'id="data-quality"' in html and "no row carried visits" in html
    assert "25.0% of rows of the wrong type" in html
    assert 'id="fig-quality"' in html and 'id="fig-confusion"' in html

    series = data.quality_series(
        deployment=deployment, start=now - timedelta(hours=24), end=now, points=12
    )
    assert sum(series["series"][2]["labelled"]) == 120
    assert series["totals"][2]["labelled"] == 120 and series["totals"][2]["predictions"] == 120
    assert series["totals"][2]["value"] == right / 120
    figure = charts.quality_figure(times=series["times"], series=series["series"])
    assert {trace["name"] for trace in figure["data"]} == {"v1", "v2"}


def test_quality_panels_say_what_is_missing_without_labels(ops, login):  # noqa: F811
    html = login(ops["operator"]).get(f"/deployments/{ops['deployment'].name}/").content.decode()
    assert "No labels have arrived" in html
    empty = charts.confusion_matrix_figure(classes=[], matrix=None, version=2)
    assert "No labelled predictions" in json.dumps(empty)


def test_a_viewer_sees_the_panels_too(ops, make_user, login):  # noqa: F811
    viewer = make_user(Role.VIEWER, "vera")
    assert login(viewer).get(f"/deployments/{ops['deployment'].name}/").status_code == 200
