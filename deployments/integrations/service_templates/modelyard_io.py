"""Request/response helpers shared by every generated Modelyard service.

This file is copied verbatim next to the generated ``service.py`` in each Bento, so it must
only import what every Bento ships (numpy; pandas lazily, for models that want named
columns). It never imports Django or the rest of Modelyard: a Bento is self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class InvalidInstances(ValueError):
    """The request's ``instances`` cannot be turned into model input (answered as HTTP 400)."""


def rows_to_values(instances: Any, feature_names: Sequence[str] | None) -> list[list[Any]]:
    """Turn ``instances`` (objects keyed by feature name, or positional lists) into rows.

    Rows keyed by name are ordered by ``feature_names``; keys the model does not know are
    ignored so clients may send an id or timestamp along, but a missing feature is an
    error (silently filling it in would change the prediction).
    """
    if not isinstance(instances, list) or not instances:
        raise InvalidInstances("'instances' must be a non-empty list of rows")
    first = instances[0]
    if isinstance(first, dict):
        if not feature_names:
            raise InvalidInstances(
                "this model has no feature names, so rows must be positional lists of values"
            )
        rows: list[list[Any]] = []
        for index, row in enumerate(instances):
            if not isinstance(row, dict):
                raise InvalidInstances(f"row {index} is not an object like row 0")
            try:
                rows.append([row[name] for name in feature_names])
            except KeyError:
                missing = [name for name in feature_names if name not in row]
                raise InvalidInstances(
                    f"row {index} lacks feature(s) {', '.join(missing[:10])}"
                ) from None
        return rows
    if isinstance(first, list):
        width = len(feature_names) if feature_names else len(first)
        for index, row in enumerate(instances):
            if not isinstance(row, list):
                raise InvalidInstances(f"row {index} is not a list like row 0")
            if len(row) != width:
                raise InvalidInstances(f"row {index} has {len(row)} values, expected {width}")
        return instances
    raise InvalidInstances("each row must be an object keyed by feature name or a list of values")


def numeric_matrix(
    rows: list[list[Any]], dtype: Any = np.float64, *, allow_object: bool = False
) -> np.ndarray:
    """Rows as a 2-D numeric array; JSON null becomes NaN (models that handle missing values).

    ``allow_object`` falls back to an object array for models (e.g. scikit-learn pipelines
    with encoders) that take mixed values without column names.
    """
    try:
        return np.asarray(rows, dtype=dtype)
    except (TypeError, ValueError) as exc:
        if allow_object:
            return np.asarray(rows, dtype=object)
        raise InvalidInstances(f"instances must be numeric for this model: {exc}") from None


def frame(rows: Any, columns: Sequence[str]) -> Any:
    """Rows as a DataFrame with the model's column names (models fitted on DataFrames)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))


def to_jsonable(values: Any) -> Any:
    """numpy arrays and scalars (and dict rows from ONNX ZipMap) as plain JSON values."""
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, np.generic):
        return values.item()
    if isinstance(values, dict):
        return [to_jsonable(values[key]) for key in sorted(values)]
    if isinstance(values, list | tuple):
        return [to_jsonable(value) for value in values]
    return values


def response(predictions: Any, probabilities: Any | None, model_version: int) -> dict[str, Any]:
    """The response body every Modelyard service returns."""
    body: dict[str, Any] = {
        "predictions": to_jsonable(predictions),
        "model_version": model_version,
    }
    if probabilities is not None:
        body["probabilities"] = to_jsonable(probabilities)
    return body
