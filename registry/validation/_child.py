"""Load one model and smoke-predict, inside the sandbox process started by sandbox.py.

Run by file path as ``python -I -B _child.py`` with resource limits already applied. It
reads one JSON request on stdin and writes one JSON response to the original stdout.
The project is kept out of reach (isolated mode, plus an import hook for the packages the
request names), so this file must stay self-contained: it imports only the standard
library and the model libraries.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

PREVIEW_ROWS = 5


class _ProjectBlocker:
    """Import hook that refuses the project's own packages (first on ``sys.meta_path``)."""

    def __init__(self, names: list[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (the model sandbox cannot import the project)",
                name=fullname,
            )
        return None


def _import_modelkit(directory: str) -> None:
    """Import registry/modelkit by path as the top-level package ``modelkit``.

    A Bento ships the same files as ``modelkit``; the child cannot import them through the
    project (blocked above), and putting registry/ on sys.path would expose its modules.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "modelkit",
        os.path.join(directory, "__init__.py"),
        submodule_search_locations=[directory],
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["modelkit"] = module
    spec.loader.exec_module(module)


def main() -> int:
    # stdout carries only our JSON; everything else libraries print (Python or C level)
    # goes to stderr, which the parent keeps for error reports.
    result_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    faulthandler.enable()  # a crashing native loader leaves a traceback on stderr
    request = json.loads(sys.stdin.read())
    # Before anything imports a model library: an editable install of the project puts it
    # on every interpreter's path, -I or not.
    sys.meta_path.insert(0, _ProjectBlocker(request.get("blocked_packages", [])))
    _import_modelkit(request["modelkit_dir"])
    response = run(request)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    response["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    result_stream.write(json.dumps(response, allow_nan=False))
    result_stream.flush()
    return 0


def run(request: dict[str, Any]) -> dict[str, Any]:
    fmt = request["format"]
    started = time.perf_counter()
    try:
        model = LOADERS[fmt](request)
    except MemoryError:
        return _failure("memory", "MemoryError while loading the model")
    except Exception as exc:
        traceback.print_exc()
        return _failure("load", f"model failed to load: {_describe(exc)}")
    load_seconds = time.perf_counter() - started

    # The same module decides and applies the contract here as in every served model.
    from modelkit import contract as model_contract
    from modelkit import contract_decide

    source = "reference" if request.get("sample_path") else "synthetic"
    label_column = request.get("label_column")
    try:
        raw = None
        if request.get("sample_path"):
            raw, _ = model_contract.reference_split(
                contract_decide.read_sample(
                    request["sample_path"], int(request.get("sample_rows", 100))
                ),
                label_column,
            )
        decided = contract_decide.decide(
            model,
            fmt,
            sample=raw,
            declared_names=request.get("declared_feature_names"),
            class_labels=request.get("class_labels"),
            label_column=label_column,
        )
        if raw is not None:
            frame = model_contract.typed_frame(decided, model_contract.usable_rows(decided, raw))
        else:
            frame = contract_decide.synthetic_frame(decided)
        decided = contract_decide.settle(model, decided, frame)
        predictor = model_contract.Predictor(model, decided)
        # Predicted from the JSON rows a client would send: what the smoke check replays.
        rows = model_contract.frame_to_rows(decided, frame)
        started = time.perf_counter()
        predictions, proba = predictor.predict_rows(rows, True)
        predict_seconds = time.perf_counter() - started
        body = model_contract.response(decided, predictions, proba, 0)
    except MemoryError:
        return _failure("memory", "MemoryError while predicting")
    except (contract_decide.ContractDecisionError, model_contract.ContractError) as exc:
        return _failure("sample", str(exc) + _synthetic_hint(source), load_seconds)
    except Exception as exc:
        traceback.print_exc()
        message = f"smoke prediction failed: {_describe(exc)}{_synthetic_hint(source)}"
        return _failure("predict", message, load_seconds)

    labelled = None
    if label_column and request.get("sample_path"):
        try:
            labelled = _labelled_predictions(predictor, decided, request)
        except MemoryError:
            return _failure("memory", "MemoryError while predicting the labelled rows")
        except Exception as exc:
            # The baseline is extra: a model that answers its smoke rows is still valid.
            traceback.print_exc()
            labelled = {"error": f"the labelled reference rows failed: {_describe(exc)}"}

    import numpy as np

    array = np.asarray(predictions) if not isinstance(predictions, list) else None
    return {
        "ok": True,
        "error": None,
        "error_kind": None,
        "load_seconds": round(load_seconds, 6),
        "predict_seconds": round(predict_seconds, 6),
        "sample_rows": len(rows),
        "sample_source": source,
        "output_shape": list(array.shape) if array is not None else [len(predictions)],
        "output_dtype": _dtype_name(array.dtype) if array is not None else "object",
        "input_schema": [
            {"name": f["name"], "dtype": _SCHEMA_DTYPES[f["type"]]} for f in decided["features"]
        ],
        "n_features": len(decided["features"]),
        "feature_names": model_contract.feature_names(decided),
        "predictions_preview": body["predictions"][:PREVIEW_ROWS],
        "probabilities_preview": (body.get("probabilities") or [])[:PREVIEW_ROWS] or None,
        "smoke_rows": rows[:PREVIEW_ROWS],
        "contract": decided,
        "labelled": labelled,
    }


def _labelled_predictions(predictor: Any, decided: dict[str, Any], request: dict[str, Any]) -> Any:
    """The model's answers on every labelled reference row it can take (up to the reference's
    row limit): their positions in the file, predictions and probabilities. The platform reads
    the labels itself and computes the metrics; the model never sees a label."""
    from modelkit import contract as model_contract
    from modelkit import contract_decide

    sample = contract_decide.read_sample(request["sample_path"], int(request["label_rows"]))
    features, labels = model_contract.reference_split(sample, request["label_column"])
    labelled = labels.notna().to_numpy()
    take = labelled & model_contract.usable_mask(decided, features)
    positions = [int(i) for i in take.nonzero()[0]]
    result = {
        "rows": positions,
        "unusable": int(labelled.sum()) - len(positions),
        "predictions": [],
        "probabilities": None,
    }
    if positions:
        frame = model_contract.typed_frame(decided, features.iloc[positions])
        predictions, proba = predictor.predict_frame(frame, True)
        body = model_contract.response(decided, predictions, proba, 0)
        result["predictions"] = body["predictions"]
        result["probabilities"] = body.get("probabilities")
    return result


_SCHEMA_DTYPES = {"number": "float64", "integer": "int64", "string": "string", "boolean": "bool"}


def _synthetic_hint(source: str) -> str:
    if source != "synthetic":
        return ""
    return (
        " (the model was tried on a synthetic sample of made-up values; upload reference "
        "data, a sample of the training data, so it is tried on real rows)"
    )


def _failure(kind: str, message: str, load_seconds: float | None = None) -> dict[str, Any]:
    return {"ok": False, "error": message, "error_kind": kind, "load_seconds": load_seconds}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- loaders ----------------------------------------------------------------------------


def _load_recorded(request: dict[str, Any]) -> Any:
    # The one loader every model process uses, with the decision validation records on the
    # version: a restricted unpickler for pickle/joblib, the reviewed trust for skops.
    from modelkit.loading import load_model

    return load_model(request["artifact_path"], request["loader"], threads=1)


LOADERS = dict.fromkeys(
    ("pickle", "joblib", "skops", "xgboost-json", "xgboost-ubj", "lightgbm-text", "onnx"),
    _load_recorded,
)


# --- JSON-safe output ---------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    import numpy as np

    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return str(dtype)  # pandas extension dtypes: category, string, ...
    if dtype.kind in "OUS":
        return "string"
    if dtype.kind == "b":
        return "bool"
    return dtype.name


if __name__ == "__main__":
    sys.exit(main())
