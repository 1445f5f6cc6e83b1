"""Live quality of a version: its logged predictions joined to their labels.

PostgreSQL joins the window's labelled predictions and hands them over as one text value that
pandas parses (``_pairs``): a million labelled rows in about a second. The metrics, and how a
label meets a prediction, are ``core.quality_metrics``'s: the same computation gives a
version's baseline on its reference labels at validation.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from core.quality_metrics import (
    CLASSIFICATION,
    REGRESSION,
    as_class,
    class_index,
    quality_metrics,
    wilson,
)
from deployments.models import Deployment
from monitoring.models import PredictionRecord
from registry.models import ModelVersion

PREDICTIONS = PredictionRecord._meta.db_table


def quality_compute(
    *,
    deployment: Deployment,
    version: int,
    start: datetime,
    end: datetime,
    arm: str | None = None,
) -> dict[str, Any]:
    """Live quality of ``version`` over predictions made in [start, end) that have labels."""
    model_version = ModelVersion.objects.filter(
        model_id=deployment.model_id, number=version
    ).first()
    contract = (model_version.contract or {}) if model_version else {}
    output = contract.get("output") or {}
    where = "p.deployment_id = %s AND p.version = %s AND p.ts >= %s AND p.ts < %s"
    params: list[Any] = [deployment.pk, version, start, end]
    if arm:
        where += " AND p.arm = %s"
        params.append(arm)
    classes = list(output.get("classes") or []) if output.get("kind") == "label" else None
    with_proba = bool(classes) and bool(output.get("probabilities"))
    # A transaction for SET LOCAL.
    with transaction.atomic(), connection.cursor() as cursor:
        predicted, sampled, pairs = _pairs(
            cursor, where, params, len(classes) if with_proba and classes else 0
        )
    body: dict[str, Any] = {
        "version": version,
        "arm": arm,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "predictions": int(predicted),
        "sampled": bool(sampled),
    }
    probabilities = (
        pairs[[f"p{i}" for i in range(len(classes))]].to_numpy(dtype=float)
        if with_proba and classes
        else None
    )
    body.update(
        quality_metrics(
            truth=pairs["label"],
            predictions=pairs["prediction"],
            probabilities=probabilities,
            task=CLASSIFICATION if classes is not None else REGRESSION,
            classes=classes,
        )
    )
    body["label_coverage"] = body["labelled"] / body["predictions"] if body["predictions"] else 0.0
    return body


def _pairs(cursor: Any, where: str, params: list[Any], proba_columns: int) -> Any:
    """The window's prediction count, whether it was sampled, and every labelled prediction
    as a DataFrame (label and prediction as categories of their JSON text, then one column
    per class probability) -- one scan of the window.

    PostgreSQL joins and writes the labelled rows as ONE tab-separated text value (JSON text
    holds no raw tab or newline), which pandas' C reader parses: a million rows read through
    the cursor, or through COPY (one message per row), spent 3-10 s in Python; this ~1 s.
    """
    import pandas as pd

    # A binary classifier's row is [1 - p, p]: only the positive class's probability is read
    # (a million fewer numbers printed and parsed: ~0.25 s) and its complement taken here.
    read = [1] if proba_columns == 2 else list(range(proba_columns))
    columns = ["label", "prediction"] + [f"p{i}" for i in read]
    fields = ", ".join(
        ["l.label::text", "p.prediction::text"]
        + [f"coalesce(p.probabilities[{i + 1}]::text, '')" for i in read]
    )
    cursor.execute("SET LOCAL jit = off")  # compiling this one scan costs more than it saves
    cursor.execute(
        "SELECT count(*), coalesce(bool_or(p.sampled), false), "  # noqa: S608 -- constants
        f"string_agg(concat_ws(E'\\t', {fields}), E'\\n') FILTER (WHERE l.row_id IS NOT NULL) "
        f"FROM {PREDICTIONS} p LEFT JOIN monitoring_predictionlabel l "
        f"ON l.deployment_id = p.deployment_id AND l.row_id = p.row_id WHERE {where}",
        params,
    )
    predicted, sampled, text = cursor.fetchone()
    if not text:
        frame = pd.DataFrame({name: pd.Series(dtype=str) for name in columns})
    else:
        frame = pd.read_csv(
            io.StringIO(text),
            sep="\t",
            header=None,
            names=columns,
            quoting=csv.QUOTE_NONE,
            dtype={"label": "category", "prediction": "category"},
            keep_default_na=False,
            na_values={f"p{i}": [""] for i in read},
        )
    if proba_columns == 2:
        frame.insert(2, "p0", 1.0 - frame["p1"].astype(float))
    return predicted, sampled, frame


def prediction_log_versions(*, deployment: Deployment, start: datetime, end: datetime) -> list[int]:
    """The versions that answered in [start, end), newest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT version FROM {PREDICTIONS} "  # noqa: S608 -- a module constant
            "WHERE deployment_id = %s AND ts >= %s AND ts < %s ORDER BY version DESC",
            [deployment.pk, start, end],
        )
        return [version for (version,) in cursor.fetchall()]


def quality_series(
    *, deployment: Deployment, start: datetime, end: datetime, points: int = 12
) -> dict[str, Any]:
    """Accuracy (classifiers) or mean absolute error (regressors) per version over ``points``
    equal buckets of [start, end), with the labelled count of each bucket, and per version the
    window's totals (predictions, labelled, the headline metric and its interval).

    One grouped query for every version (the dashboard's query count must not grow with
    them), then the class rule of ``quality_compute`` on the few distinct (label, prediction)
    texts.
    """
    span = max(1.0, (end - start).total_seconds())
    step = span / points
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.version, floor(extract(epoch FROM p.ts - %s) / %s)::int, "  # noqa: S608
            "l.label::text, p.prediction::text, count(*) "
            f"FROM {PREDICTIONS} p LEFT JOIN monitoring_predictionlabel l "
            "ON l.deployment_id = p.deployment_id AND l.row_id = p.row_id "
            "WHERE p.deployment_id = %s AND p.ts >= %s AND p.ts < %s GROUP BY 1, 2, 3, 4",
            [start, step, deployment.pk, start, end],
        )
        rows = cursor.fetchall()
    contracts = {
        v.number: ((v.contract or {}).get("output") or {})
        for v in ModelVersion.objects.filter(
            model_id=deployment.model_id, number__in={row[0] for row in rows}
        ).only("number", "contract")
    }
    cells: dict[int, dict[int, list[float]]] = {}  # version -> bucket -> [score sum, labelled]
    predicted_per_version: dict[int, int] = {}
    metric: dict[int, str] = {}
    indexes: dict[int, dict[str, int]] = {}
    for version, bucket, label_text, prediction_text, count in rows:
        predicted_per_version[version] = predicted_per_version.get(version, 0) + count
        if label_text is None:
            continue
        output = contracts.get(version, {})
        cell = cells.setdefault(version, {}).setdefault(min(bucket, points - 1), [0.0, 0])
        if output.get("kind") == "label":
            metric[version] = "accuracy"
            index = indexes.setdefault(version, class_index(list(output.get("classes") or [])))
            label, guess = as_class(label_text, index), as_class(prediction_text, index)
            if label is None or guess is None:
                continue
            cell[0] += count if label == guess else 0
        else:
            metric[version] = "mae"
            try:
                truth = float(str(json.loads(label_text)))
                value = float(str(json.loads(prediction_text)))
            except (TypeError, ValueError):
                continue
            cell[0] += abs(truth - value) * count
        cell[1] += count
    times = [start + (end - start) * ((i + 0.5) / points) for i in range(points)]
    series: dict[int, dict[str, Any]] = {}
    totals: dict[int, dict[str, Any]] = {}
    for version in sorted(predicted_per_version):
        buckets = cells.get(version, {})
        labelled = [int(buckets[i][1]) if i in buckets else 0 for i in range(points)]
        score = sum(cell[0] for cell in buckets.values())
        count = sum(labelled)
        name = metric.get(version, "accuracy")
        if count:
            series[version] = {
                "metric": name,
                "values": [
                    buckets[i][0] / buckets[i][1] if labelled[i] else None for i in range(points)
                ],
                "labelled": labelled,
            }
        headline = score / count if count else None
        totals[version] = {
            "metric": name,
            "predictions": predicted_per_version[version],
            "labelled": count,
            "value": headline,
            # Wilson for a proportion; the MAE's interval needs the spread (quality_compute).
            "ci95": wilson(score, count) if name == "accuracy" and count else None,
        }
    return {"times": times, "series": series, "totals": totals}
