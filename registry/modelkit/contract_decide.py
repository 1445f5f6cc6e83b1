"""Deciding a version's contract at validation, from the loaded model and its sample.

Run only where a model is loaded for validation (the sandbox child). ``decide`` reads what
the model itself says (its feature names, encoders' categories, missing-value support,
classes, booster objective, ONNX inputs and outputs), then the declared names and labels
from the upload's metadata, then the reference sample's header; ``settle`` predicts on the
typed sample once to learn what only an answer shows (whether predict is the argmax of
predict_proba, an ONNX model's class order, multi-output).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .contract import _ONNX_DTYPES as ONNX_DTYPES
from .contract import BOOLEAN, CONTRACT_VERSION, INTEGER, NUMBER, STRING, json_safe

SYNTHETIC_ROWS = 5
_AUTO_LIGHTGBM = re.compile(r"Column_\d+")


class ContractDecisionError(ValueError):
    """The model and its sample do not give a usable contract (validation fails with this)."""


def family_of(model: Any) -> str:
    kind = type(model)
    module, name = kind.__module__ or "", kind.__name__
    if module.startswith("xgboost") and name == "Booster":
        return "xgboost"
    if module.startswith("lightgbm") and name == "Booster":
        return "lightgbm"
    if module.startswith("onnxruntime") and name == "InferenceSession":
        return "onnx"
    if callable(getattr(model, "predict", None)):
        return "estimator"
    raise ContractDecisionError(f"loaded object of type {name} has no predict()")


def read_sample(path: str, rows: int) -> Any:
    """The first ``rows`` of a reference file: CSV cells as strings (typed later by the
    contract, never by pandas' guesses), Parquet with its own types."""
    import pandas as pd

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
        if batch is None:
            raise ContractDecisionError("reference sample has no rows")
        return batch.to_pandas()
    return pd.read_csv(path, nrows=rows, encoding="utf-8-sig", dtype=str, keep_default_na=True)


def decide(
    model: Any,
    fmt: str,
    *,
    sample: Any = None,
    declared_names: list[str] | None = None,
    class_labels: list[Any] | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """The contract of ``model``; ``settle`` completes it after a prediction.

    ``sample`` is the reference without its ``label_column`` (``contract.reference_split``);
    a model that takes the label column as a feature is refused (it would learn the answer).
    """
    family = family_of(model)
    names, count, form = _model_inputs(model, family)
    source = "model"
    if names is None:
        names, source = _names_without_model(count, sample, declared_names)
    if label_column and label_column in names:
        raise ContractDecisionError(
            f"label_column {label_column!r} is one of the model's features; the true labels "
            "must not be an input of the model"
        )
    if source == "model" and sample is not None:
        missing = [n for n in names if n not in sample.columns]
        if missing:
            raise ContractDecisionError(
                f"reference sample lacks the model's feature column(s): {', '.join(missing)}"
            )
    categories = _encoder_categories(model) if family == "estimator" else {}
    features = [
        _feature(model, family, form, name, index, sample, categories)
        for index, name in enumerate(names)
    ]
    return {
        "version": CONTRACT_VERSION,
        "format": fmt,
        "family": family,
        "features": features,
        "names_source": source,
        "input": form,
        "output": _output(model, family, class_labels),
    }


def _model_inputs(model: Any, family: str) -> tuple[list[str] | None, int | None, dict[str, Any]]:
    if family == "estimator":
        names = getattr(model, "feature_names_in_", None)
        count = getattr(model, "n_features_in_", None)
        named = [str(n) for n in names] if names is not None else None
        form = "frame" if named else "matrix"
        return named, int(count) if count is not None else None, {"form": form, "dtype": "float64"}
    if family == "xgboost":
        named = list(model.feature_names) if model.feature_names else None
        form = "frame" if named else "matrix"
        return named, int(model.num_features()), {"form": form, "dtype": "float64"}
    if family == "lightgbm":
        names = list(model.feature_name())
        auto = all(_AUTO_LIGHTGBM.fullmatch(n) for n in names)
        return (None if auto else names), int(model.num_feature()), {"form": "matrix"}
    inputs = model.get_inputs()
    for spec in inputs:
        if spec.type not in ONNX_DTYPES:
            raise ContractDecisionError(
                f"ONNX input {spec.name!r} has unsupported type {spec.type}"
            )
    feeds = [
        {"name": s.name, "dtype": ONNX_DTYPES[s.type], "rank": len(s.shape or [None, None])}
        for s in inputs
    ]
    if len(inputs) > 1:
        # One input per column, named after it (skl2onnx's layout for DataFrames).
        return [s.name for s in inputs], len(inputs), {"form": "onnx_feeds", "feeds": feeds}
    shape = inputs[0].shape
    if len(shape) != 2:
        raise ContractDecisionError(f"ONNX input {inputs[0].name!r} has shape {shape}")
    count = shape[1] if isinstance(shape[1], int) else None
    return None, count, {"form": "onnx_matrix", "dtype": feeds[0]["dtype"], "feeds": feeds}


def _names_without_model(
    count: int | None, sample: Any, declared: list[str] | None
) -> tuple[list[str], str]:
    if declared:
        if count is not None and len(declared) != count:
            raise ContractDecisionError(
                f"the metadata declares {len(declared)} feature names; the model takes {count}"
            )
        return [str(n) for n in declared], "declared"
    if sample is not None:
        if count is not None and len(sample.columns) != count:
            raise ContractDecisionError(
                f"the model was fitted without feature names and takes {count} features by "
                f"position, but the reference sample has {len(sample.columns)} columns; "
                "upload a sample with exactly the training columns, in order"
            )
        return [str(c) for c in sample.columns], "reference"
    if count is None:
        raise ContractDecisionError(
            "the model does not say how many features it takes; upload reference data"
        )
    return [f"feature_{i}" for i in range(count)], "positional"


def _feature(
    model: Any,
    family: str,
    form: dict[str, Any],
    name: str,
    index: int,
    sample: Any,
    categories: dict[str, Any],
) -> dict[str, Any]:
    column = sample[name] if sample is not None and name in sample.columns else None
    if form["form"] in ("onnx_feeds", "onnx_matrix"):
        spec = form["feeds"][index if form["form"] == "onnx_feeds" else 0]
        kind = _kind_of_dtype(spec["dtype"])
        nullable = kind == NUMBER
        return {"name": name, "type": kind, "nullable": nullable, "strict": kind == INTEGER}
    if family in ("xgboost", "lightgbm"):
        return {"name": name, "type": NUMBER, "nullable": True, "strict": False}
    known = categories.get(name)
    if known is not None:
        kind = STRING if np.asarray(known).dtype.kind in "OUS" else _kind_of_values(known)
    elif column is not None:
        kind = _kind_of_column(column)
    else:
        kind = NUMBER
    # Nulls in the sample do not make a feature nullable: only the model can take NaN.
    nullable = _allows_nan(model)
    feature = {"name": name, "type": kind, "nullable": nullable, "strict": False}
    if known is not None and kind == STRING and len(known):
        feature["example"] = json_safe(known[0])
    return feature


def _kind_of_dtype(dtype: str) -> str:
    if dtype == "object":
        return STRING
    if dtype == "bool":
        return BOOLEAN
    return INTEGER if dtype.startswith("int") else NUMBER


def _kind_of_values(values: Any) -> str:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return INTEGER if finite.size and (finite == np.round(finite)).all() else NUMBER


def _kind_of_column(column: Any) -> str:
    import pandas as pd
    from pandas.api import types

    if types.is_bool_dtype(column.dtype):
        return BOOLEAN
    if types.is_numeric_dtype(column.dtype):
        return _kind_of_values(column.to_numpy(dtype=np.float64, na_value=np.nan))
    present = column.dropna()
    if present.empty:
        return NUMBER
    lowered = {str(v).strip().lower() for v in present}
    if lowered <= {"true", "false"}:
        return BOOLEAN
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any():
        return STRING
    return _kind_of_values(numbers.to_numpy(dtype=np.float64))


def _allows_nan(model: Any) -> bool:
    steps = getattr(model, "steps", None)
    if steps:  # a pipeline handles NaN if an imputer comes before any step that does not
        for _, step in steps:
            if "Imputer" in type(step).__name__:
                return True
            if step not in (None, "passthrough") and not _allows_nan(step):
                return False
        return True
    try:
        return bool(model.__sklearn_tags__().input_tags.allow_nan)
    except Exception:
        try:
            return bool(model._get_tags().get("allow_nan"))
        except Exception:
            return False


def _encoder_categories(model: Any) -> dict[str, Any]:
    """Per input column, the categories a fitted encoder inside the model knows."""
    found: dict[str, Any] = {}

    def walk(estimator: Any, columns: list[str] | None) -> None:
        if estimator is None or isinstance(estimator, str):
            return
        for _, step in getattr(estimator, "steps", None) or []:
            walk(step, columns)
            columns = None  # only the first step sees the input columns
        names_in = getattr(estimator, "feature_names_in_", None)
        names = [str(n) for n in names_in] if names_in is not None else columns
        for _, transformer, selected in getattr(estimator, "transformers_", None) or []:
            walk(transformer, _selected(selected, names))
        for _, transformer in getattr(estimator, "transformer_list", None) or []:
            walk(transformer, names)
        cats = getattr(estimator, "categories_", None)
        if cats is not None and names is not None and len(cats) == len(names):
            for name, values in zip(names, cats, strict=True):
                found.setdefault(name, values)

    walk(model, None)
    return found


def _selected(selected: Any, names: list[str] | None) -> list[str] | None:
    if isinstance(selected, str):
        return [selected]
    try:
        items = list(selected)
    except TypeError:
        return None
    if all(isinstance(i, str) for i in items):
        return items
    if names is None:
        return None
    if all(isinstance(i, bool | np.bool_) for i in items):
        return [n for n, keep in zip(names, items, strict=False) if keep]
    if all(isinstance(i, int | np.integer) for i in items):
        return [names[int(i)] for i in items]
    return None


def _output(model: Any, family: str, class_labels: list[Any] | None) -> dict[str, Any]:
    if family == "estimator":
        classes = getattr(model, "classes_", None)
        has_proba = callable(getattr(model, "predict_proba", None))
        if classes is None or np.asarray(classes).ndim != 1:
            return {"kind": "value", "classes": None, "labels_source": None, "probabilities": False}
        return {
            "kind": "label",
            "classes": json_safe(np.asarray(classes)),
            "labels_source": "model",
            "probabilities": has_proba,
            "single_pass": False,
        }
    if family == "onnx":
        outputs = model.get_outputs()
        proba_type = outputs[1].type if len(outputs) > 1 else None
        if proba_type is None:
            return {"kind": "value", "classes": None, "labels_source": None, "probabilities": False}
        return {
            "kind": "label",
            "classes": list(class_labels) if class_labels else None,
            "labels_source": "metadata" if class_labels else None,
            "probabilities": True,
            "onnx_proba": proba_type,
        }
    objective, count = _booster_objective(model, family)
    if objective in ("binary:logistic", "binary", "multi:softprob", "multiclass", "multiclassova"):
        if class_labels is not None and len(class_labels) != count:
            raise ContractDecisionError(
                f"the metadata gives {len(class_labels)} class_labels; the model has {count} "
                "classes"
            )
        return {
            "kind": "label",
            "classes": list(class_labels) if class_labels else list(range(count)),
            "labels_source": "metadata" if class_labels else "index",
            "probabilities": True,
            "single_pass": True,
            "objective": objective,
        }
    return {
        "kind": "value",
        "classes": None,
        "labels_source": None,
        "probabilities": False,
        "objective": objective,
    }


def _booster_objective(model: Any, family: str) -> tuple[str, int]:
    if family == "xgboost":
        config = json.loads(model.save_config())["learner"]
        objective = config["objective"]["name"]
        count = int(config["learner_model_param"].get("num_class") or 0)
        return objective, max(count, 2)
    objective = str(model.params.get("objective", "")).split()[0] if model.params else ""
    if not objective:
        objective = str(model.dump_model(num_iteration=1).get("objective", "")).split()[0]
    return objective, max(int(model.num_model_per_iteration()), 2)


def synthetic_frame(contract: dict[str, Any], rows: int = SYNTHETIC_ROWS) -> Any:
    """A small sample of plausible values when no reference data was uploaded."""
    import pandas as pd

    rng = np.random.default_rng(0)
    columns: dict[str, Any] = {}
    for feature in contract["features"]:
        kind = feature["type"]
        if kind == STRING:
            columns[feature["name"]] = [feature.get("example", "a")] * rows
        elif kind == BOOLEAN:
            columns[feature["name"]] = [False] * rows
        elif kind == INTEGER:
            columns[feature["name"]] = rng.integers(0, 5, size=rows)
        else:
            columns[feature["name"]] = rng.normal(size=rows)
    return pd.DataFrame(columns, columns=[f["name"] for f in contract["features"]])


def settle(model: Any, contract: dict[str, Any], frame: Any) -> dict[str, Any]:
    """Complete the contract from one prediction on the typed sample."""
    from .contract import Predictor, model_input

    output = dict(contract["output"])
    if contract["family"] == "estimator" and output["kind"] == "label":
        features = model_input(contract, frame)
        predictions = np.asarray(model.predict(features))
        if predictions.ndim > 1:
            output.update(kind="multi_output", classes=None, probabilities=False)
        elif output["probabilities"]:
            proba = np.asarray(model.predict_proba(features))
            derived = np.asarray(output["classes"], dtype=object).take(np.argmax(proba, axis=1))
            output["single_pass"] = bool(
                [json_safe(v) for v in derived] == [json_safe(v) for v in predictions]
            )
    elif contract["family"] == "estimator":
        predictions = np.asarray(model.predict(model_input(contract, frame)))
        if predictions.ndim > 1 and predictions.shape[1] > 1:
            output["kind"] = "multi_output"
    if contract["family"] == "onnx" and output["kind"] == "label":
        outputs = model.run(None, model_input(contract, frame))
        proba = outputs[1]
        if isinstance(proba, list) and proba:  # ZipMap: its keys are the original labels
            keys = json_safe(list(proba[0]))
            if output["classes"] is not None and len(output["classes"]) != len(keys):
                raise ContractDecisionError(
                    f"the metadata gives {len(output['classes'])} class_labels; the model "
                    f"has {len(keys)} classes"
                )
            output.update(classes=keys, labels_source="model")
        elif output["classes"] is None:
            count = int(np.asarray(proba).reshape(len(frame), -1).shape[1])
            output.update(classes=list(range(count)), labels_source="index")
    settled = {**contract, "output": output}
    Predictor(model, settled)  # checks that the contract applies
    return settled
