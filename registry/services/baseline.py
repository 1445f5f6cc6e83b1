"""A version's baseline quality: its answers on the labelled rows of its reference sample.

The sandbox child predicts (the model is loaded nowhere else); this process reads the labels
from the file itself, so a model never sees a label and cannot report its own, and computes
the metrics with live quality's code (``core.quality_metrics``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from core.quality_metrics import CLASSIFICATION, REGRESSION, quality_metrics
from registry.modelkit.contract import json_safe
from registry.models import ModelVersion
from registry.validation.reference import ReferenceDataError, load_reference_labels


def reference_baseline(
    *,
    version: ModelVersion,
    reference_path: Path,
    contract: dict[str, Any],
    labelled: dict[str, Any],
) -> dict[str, Any]:
    """``{"label_column", "labelled_rows", "unusable", **quality_metrics}`` from the child's
    ``labelled`` answers, or ``{"label_column", "error"}`` when there is no baseline to give.

    JSON-safe (an interval without an end is null): it is stored on the version as it is.
    """
    label_column = version.reference_label_column
    found: dict[str, Any] = {"label_column": label_column}
    if labelled.get("error"):
        return {**found, "error": str(labelled["error"])}
    kind = (contract.get("output") or {}).get("kind")
    if kind not in ("label", "value"):
        return {**found, "error": f"no baseline for a model whose output is {kind}"}
    try:
        labels = load_reference_labels(
            reference_path,
            max_rows=settings.MODELYARD_MAX_REFERENCE_ROWS,
            label_column=label_column,
        )
    except ReferenceDataError as exc:
        return {**found, "error": str(exc)}
    rows, predictions = labelled.get("rows"), labelled.get("predictions")
    # The child's answer is the model's doing: believed only where it fits the file.
    if (
        not isinstance(rows, list)
        or not isinstance(predictions, list)
        or len(rows) != len(predictions)
        or not all(isinstance(r, int) and 0 <= r < len(labels) for r in rows)
        or labels.iloc[rows].isna().any()
    ):
        return {**found, "error": "the model's answers do not match the labelled reference rows"}
    classes = (contract.get("output") or {}).get("classes") if kind == "label" else None
    proba = labelled.get("probabilities")
    probabilities = _probabilities(proba, len(rows), len(classes)) if classes and proba else None
    metrics = quality_metrics(
        # JSON text on both sides, as live labels and predictions are stored.
        truth=[json.dumps(json_safe(value)) for value in labels.iloc[rows]],
        predictions=[json.dumps(json_safe(value)) for value in predictions],
        probabilities=probabilities,
        task=CLASSIFICATION if kind == "label" else REGRESSION,
        classes=classes,
    )
    result = {
        **found,
        "labelled_rows": int(labels.notna().sum()),
        "unusable": int(labelled.get("unusable") or 0),
        **metrics,
    }
    return dict(json_safe(result))


def _probabilities(proba: Any, rows: int, classes: int) -> np.ndarray | None:
    """One row per prediction, one column per class; None otherwise (judged without them)."""
    try:
        array = np.asarray(proba, dtype=float)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (rows, classes) else None
