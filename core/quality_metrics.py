"""A model's quality on labelled rows: scikit-learn's metrics, with counts and intervals.

One computation for every place that measures quality: live quality (labelled predictions,
``monitoring.selectors.quality``) and the baseline a version's reference labels give at
validation (``registry.services.validation``). It is here, below both, because registry must
not import monitoring; it knows nothing of Django, only values in and a metrics dict out.

How a label meets a prediction (the one rule): for a classifier both are matched to the
version's classes (its contract), so a CSV's "1" is the class 1 and "yes" the class "yes"; a
label that is no class of the version is counted as ``unknown_label`` and left out. For a
regressor both are numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

CLASSIFICATION, REGRESSION = "classification", "regression"
_Z95 = 1.959964


def class_index(classes: list[Any]) -> dict[str, int]:
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


def as_class(raw: Any, index: dict[str, int]) -> int | None:
    """The class position of a JSON text (label or prediction), or None."""
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


def wilson(successes: float, total: float, z: float = _Z95) -> list[float]:
    """95% Wilson score interval of a proportion."""
    # Well behaved near 0 and 1, unlike the normal approximation; scipy.stats.binomtest(...)
    # .proportion_ci gives the same but only for integer counts.
    if total <= 0:
        return [0.0, 1.0]
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def quality_metrics(
    *,
    truth: Any,
    predictions: Any,
    probabilities: np.ndarray | None,
    task: str,
    classes: list[Any] | None,
) -> dict[str, Any]:
    """The quality of ``predictions`` against ``truth`` (one JSON text per row each, aligned;
    ``probabilities`` one row per prediction in ``classes`` order, NaN where none was kept).

    ``{"task", "labelled", "unknown_label", "metrics"}`` (and ``classes`` for a classifier):
    ``metrics`` is None without a usable pair; accuracy and MAE carry a 95% interval.
    """
    if task == CLASSIFICATION:
        return _classification(truth, predictions, probabilities, list(classes or []))
    return _regression(truth, predictions)


def _positions(column: Any, index: dict[str, int]) -> np.ndarray:
    import pandas as pd

    # Few distinct texts (a class's spellings): each category is matched once, then the rows
    # take their category's class position (-1: no class of this version).
    column = pd.Series(column).astype("category")
    categories = [as_class(text, index) for text in column.cat.categories]
    # The smallest integer type that holds every position: scikit-learn's checks run
    # np.unique over the targets a dozen times, and on a million int8 labels that is ~30 %
    # faster than on int64 (roc_auc_score 0.26 s against 0.38 s, measured).
    kind = np.min_scalar_type(-max(len(index), 1))
    found = np.asarray([-1 if p is None else p for p in categories], dtype=kind)
    codes = column.cat.codes.to_numpy()
    return np.where(codes >= 0, found[codes] if len(found) else kind.type(-1), kind.type(-1))


def _classification(
    truth: Any, predictions: Any, probabilities: np.ndarray | None, classes: list[Any]
) -> dict[str, Any]:
    from sklearn import metrics

    index = class_index(classes)
    true_positions = _positions(truth, index)
    predicted_positions = _positions(predictions, index)
    known = (true_positions >= 0) & (predicted_positions >= 0)
    y_true, y_pred = true_positions[known], predicted_positions[known]
    labelled = len(y_true)
    result: dict[str, Any] = {
        "task": CLASSIFICATION,
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
    # asking it on the matrix's cells weighted by their counts keeps it sklearn's, K^2 rows
    # (a million labelled predictions cost no more than a hundred).
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
        "accuracy": {"value": accuracy, "ci95": wilson(accuracy * labelled, labelled)},
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
                "recall_ci95": wilson(float(recall[i] * support[i]), float(support[i])),
            }
            for i in positions
        ],
        "confusion_matrix": matrix.astype(int).tolist(),
    }
    if probabilities is not None:
        scores = np.asarray(probabilities, dtype=float).reshape(len(known), len(classes))
        found.update(_probability_metrics(scores[known], y_true, len(classes), metrics))
    result["metrics"] = found
    return result


def _probability_metrics(
    scores: np.ndarray, y_true: np.ndarray, count: int, metrics: Any
) -> dict[str, Any]:
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


def _regression(truth: Any, predictions: Any) -> dict[str, Any]:
    import pandas as pd
    from sklearn import metrics

    # JSON text of a number, or of a string holding one (a CSV's cell): quotes off, parse.
    def numbers(column: Any) -> Any:
        text = pd.Series(column).astype(str).str.strip('"')
        return pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)

    y_true, y_pred = numbers(truth), numbers(predictions)
    known = np.isfinite(y_true) & np.isfinite(y_pred)
    y_true, y_pred = y_true[known], y_pred[known]
    result: dict[str, Any] = {
        "task": REGRESSION,
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
        _Z95 * float(errors.std(ddof=1)) / math.sqrt(len(errors)) if len(errors) > 1 else math.inf
    )
    result["metrics"] = {
        "mae": {"value": mae, "ci95": [max(0.0, mae - half), mae + half]},
        "rmse": float(metrics.root_mean_squared_error(y_true, y_pred)),
        "r2": float(metrics.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
    }
    return result
