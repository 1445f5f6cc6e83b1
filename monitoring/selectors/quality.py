"""Live quality of a version: its logged predictions joined to their labels.

Metrics are scikit-learn's (``sklearn.metrics``), never re-implemented. PostgreSQL joins the
window's labelled predictions and hands them over as one text value that pandas parses
(``_pairs``): a million labelled rows in about a second.

How a label meets a prediction (the one rule): for a classifier both are matched to the
version's classes (its contract), so a CSV's "1" is the class 1 and "yes" the class "yes"; a
label that is no class of the version is counted as ``unknown_label`` and left out. For a
regressor both are numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from typing import Any

import numpy as np
from django.db import connection, transaction

from deployments.models import Deployment
from monitoring.models import PredictionRecord
from registry.models import ModelVersion

PREDICTIONS = PredictionRecord._meta.db_table


def _class_index(classes: list[Any]) -> dict[str, int]:
    """Every text a class may arrive as -> its position (JSON text, plain text, number text)."""
    index: dict[str, int] = {}
    for position, value in enumerate(classes):
        forms = {json.dumps(value), str(value)}
        if isinstance(value, bool):
            forms |= {str(value).lower()}
        elif isinstance(value, int | float):
            forms |= {repr(float(value)), str(int(value)) if float(value).is_integer() else ""}
        for form in forms - {""}:
            index.setdefault(form, position)
    return index


def _as_class(raw: Any, index: dict[str, int]) -> int | None:
    """The class position of a stored JSON value (label or prediction), or None."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    for form in (json.dumps(value), str(value)):
        if form in index:
            return index[form]
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        for form in (repr(number), str(int(number)) if number.is_integer() else ""):
            if form in index:
                return index[form]
    return None


def _wilson(successes: float, total: float, z: float = 1.959964) -> list[float]:
    # The Wilson score interval (well behaved near 0 and 1, unlike the normal approximation);
    # scipy.stats.binomtest(...).proportion_ci gives the same but only for integer counts.
    if total <= 0:
        return [0.0, 1.0]
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


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
    if classes is not None:
        body.update(_classification(pairs, classes, with_proba))
    else:
        body.update(_regression(pairs))
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

    columns = ["label", "prediction"] + [f"p{i}" for i in range(proba_columns)]
    fields = ", ".join(
        ["l.label::text", "p.prediction::text"]
        + [f"coalesce(p.probabilities[{i + 1}]::text, '')" for i in range(proba_columns)]
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
        return predicted, sampled, pd.DataFrame({name: pd.Series(dtype=str) for name in columns})
    frame = pd.read_csv(
        io.StringIO(text),
        sep="\t",
        header=None,
        names=columns,
        quoting=csv.QUOTE_NONE,
        dtype={"label": "category", "prediction": "category"},
        keep_default_na=False,
        na_values={f"p{i}": [""] for i in range(proba_columns)},
    )
    return predicted, sampled, frame


def _positions(column: Any, index: dict[str, int]) -> np.ndarray:
    column = column.astype("category")
    found = _as_class_many(column.cat.categories, index)
    codes = column.cat.codes.to_numpy()
    return np.where(codes >= 0, found[codes] if len(found) else -1, -1)


def _as_class_many(categories: Any, index: dict[str, int]) -> np.ndarray:
    positions = [_as_class(text, index) for text in categories]
    return np.asarray([-1 if p is None else p for p in positions], dtype=int)


def _classification(pairs: Any, classes: list[Any], with_proba: bool) -> dict[str, Any]:
    from sklearn import metrics

    index = _class_index(classes)
    # Few distinct texts (a class's spellings): each category is matched once, then the rows
    # take their category's class position (-1: no class of this version).
    truth = _positions(pairs["label"], index)
    predicted = _positions(pairs["prediction"], index)
    known = (truth >= 0) & (predicted >= 0)
    y_true, y_pred = truth[known], predicted[known]
    labelled = len(y_true)
    result: dict[str, Any] = {
        "task": "classification",
        "classes": classes,
        "labelled": labelled,
        "unknown_label": int((~known).sum()),
    }
    if not labelled:
        result["metrics"] = None
        return result
    positions = list(range(len(classes)))
    accuracy = float(metrics.accuracy_score(y_true, y_pred))
    matrix = metrics.confusion_matrix(y_true, y_pred, labels=positions)
    # precision/recall/F1 from the confusion matrix's rows and columns is what sklearn does;
    # asking it on the matrix's cells weighted by their counts keeps it sklearn's, K^2 rows.
    cell_true, cell_pred = np.nonzero(matrix)
    weights = matrix[cell_true, cell_pred].astype(float)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        cell_true, cell_pred, labels=positions, sample_weight=weights, zero_division=0
    )
    macro = metrics.precision_recall_fscore_support(
        cell_true,
        cell_pred,
        labels=positions,
        sample_weight=weights,
        average="macro",
        zero_division=0,
    )
    found: dict[str, Any] = {
        "accuracy": {"value": accuracy, "ci95": _wilson(accuracy * labelled, labelled)},
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_macro": float(macro[2]),
        "per_class": [
            {
                "class": classes[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "recall_ci95": _wilson(float(recall[i] * support[i]), float(support[i])),
            }
            for i in positions
        ],
        "confusion_matrix": matrix.astype(int).tolist(),
    }
    if with_proba:
        found.update(_probability_metrics(pairs[known], y_true, len(classes), metrics))
    result["metrics"] = found
    return result


def _probability_metrics(
    pairs: Any, y_true: np.ndarray, count: int, metrics: Any
) -> dict[str, Any]:
    scores = pairs[[f"p{i}" for i in range(count)]].to_numpy(dtype=float)
    scored = ~np.isnan(scores).any(axis=1)
    y_true, scores = y_true[scored], scores[scored]
    present = set(np.unique(y_true).tolist())
    if len(present) < 2:
        return {"roc_auc": None, "log_loss": None, "scored": int(scored.sum())}
    positions = list(range(count))
    if count == 2:
        auc: float | None = float(metrics.roc_auc_score(y_true, scores[:, 1]))
    elif len(present) == count:
        auc = float(metrics.roc_auc_score(y_true, scores, multi_class="ovr", labels=positions))
    else:
        auc = None  # one-vs-rest AUC needs every class among the labels
    return {
        "roc_auc": auc,
        "log_loss": float(metrics.log_loss(y_true, scores, labels=positions)),
        "scored": int(scored.sum()),
    }


def _regression(pairs: Any) -> dict[str, Any]:
    import pandas as pd
    from sklearn import metrics

    # JSON text of a number, or of a string holding one (a CSV upload): quotes off, parse.
    truth = pd.to_numeric(pairs["label"].astype(str).str.strip('"'), errors="coerce")
    predicted = pd.to_numeric(pairs["prediction"].astype(str).str.strip('"'), errors="coerce")
    known = np.isfinite(truth) & np.isfinite(predicted)
    y_true, y_pred = truth[known].to_numpy(), predicted[known].to_numpy()
    result: dict[str, Any] = {
        "task": "regression",
        "labelled": len(y_true),
        "unknown_label": int((~known).sum()),
    }
    if not len(y_true):
        result["metrics"] = None
        return result
    errors = np.abs(y_true - y_pred)
    mae = float(metrics.mean_absolute_error(y_true, y_pred))
    # A normal-approximation interval for the mean absolute error (wide with few labels,
    # which is the point).
    half = (
        1.959964 * float(errors.std(ddof=1)) / math.sqrt(len(errors))
        if len(errors) > 1
        else math.inf
    )
    result["metrics"] = {
        "mae": {"value": mae, "ci95": [max(0.0, mae - half), mae + half]},
        "rmse": float(metrics.root_mean_squared_error(y_true, y_pred)),
        "r2": float(metrics.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
    }
    return result


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
            index = indexes.setdefault(version, _class_index(list(output.get("classes") or [])))
            label, guess = _as_class(label_text, index), _as_class(prediction_text, index)
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
            "ci95": _wilson(score, count) if name == "accuracy" and count else None,
        }
    return {"times": times, "series": series, "totals": totals}
