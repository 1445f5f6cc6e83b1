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
import math
import os
import resource
import sys
import time
import traceback
from typing import Any

PREVIEW_ROWS = 5
SYNTHETIC_ROWS = 5
_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


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


class SampleError(Exception):
    """The sample cannot be shaped into the model's input."""


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

    try:
        adapter = ADAPTERS[fmt](model, request)
        sample, source = _sample(adapter, request)
        started = time.perf_counter()
        output = adapter.predict(sample)
        predict_seconds = time.perf_counter() - started
    except MemoryError:
        return _failure("memory", "MemoryError while predicting")
    except SampleError as exc:
        return _failure("sample", str(exc), load_seconds=load_seconds)
    except Exception as exc:
        traceback.print_exc()
        return _failure("predict", f"smoke prediction failed: {_describe(exc)}", load_seconds)

    import numpy as np

    array = output if isinstance(output, np.ndarray) else None
    return {
        "ok": True,
        "error": None,
        "error_kind": None,
        "load_seconds": round(load_seconds, 6),
        "predict_seconds": round(predict_seconds, 6),
        "sample_rows": _rows(sample),
        "sample_source": source,
        "output_shape": list(array.shape) if array is not None else [len(output)],
        "output_dtype": _dtype_name(array.dtype) if array is not None else type(output).__name__,
        "input_schema": adapter.input_schema(sample),
        "n_features": adapter.n_features,
        "feature_names": adapter.feature_names,
        "predictions_preview": _json_safe(list(output[:PREVIEW_ROWS])),
    }


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


# --- adapters: the model's signature and one predict call ---------------------------------


class _Adapter:
    feature_names: list[str] | None = None
    n_features: int | None = None
    synthetic_dtype = "float64"

    def predict(self, sample: Any) -> Any:
        raise NotImplementedError

    def prepare(self, frame: Any) -> Any:
        """The model's input from a frame whose columns are already in the model's order."""
        return frame if self.feature_names else frame.to_numpy()

    def input_schema(self, sample: Any) -> list[dict[str, str]]:
        names = self.feature_names or [f"feature_{i}" for i in range(_cols(sample))]
        dtypes = (
            [_dtype_name(t) for t in sample.dtypes]
            if hasattr(sample, "dtypes")
            else [_dtype_name(sample.dtype)] * len(names)
        )
        return [{"name": n, "dtype": d} for n, d in zip(names, dtypes, strict=False)]


class _SklearnAdapter(_Adapter):
    def __init__(self, model: Any, request: dict[str, Any]) -> None:
        if not callable(getattr(model, "predict", None)):
            raise SampleError(f"loaded object of type {type(model).__name__} has no predict()")
        self.model = model
        names = getattr(model, "feature_names_in_", None)
        self.feature_names = [str(n) for n in names] if names is not None else None
        n_features = getattr(model, "n_features_in_", None)
        self.n_features = int(n_features) if n_features is not None else None

    def predict(self, sample: Any) -> Any:
        return self.model.predict(sample)


class _XGBoostAdapter(_Adapter):
    synthetic_dtype = "float32"

    def __init__(self, booster: Any, request: dict[str, Any]) -> None:
        self.booster = booster
        self.feature_names = list(booster.feature_names) if booster.feature_names else None
        self.n_features = int(booster.num_features())
        self.feature_types = list(booster.feature_types or [])

    def prepare(self, frame: Any) -> Any:
        if not self.feature_names:
            return frame.to_numpy()
        frame = frame.copy()
        for name, kind in zip(self.feature_names, self.feature_types, strict=False):
            if kind == "c":  # categorical splits need pandas categories
                frame[name] = frame[name].astype("category")
        return frame

    def predict(self, sample: Any) -> Any:
        return self.booster.inplace_predict(sample)


class _LightGBMAdapter(_Adapter):
    def __init__(self, booster: Any, request: dict[str, Any]) -> None:
        self.booster = booster
        names = list(booster.feature_name())
        self.n_features = int(booster.num_feature())
        # LightGBM names unnamed features Column_0, Column_1, ...: those are positions.
        default = [f"Column_{i}" for i in range(self.n_features)]
        self.feature_names = None if names == default else names

    def predict(self, sample: Any) -> Any:
        return self.booster.predict(sample)


class _OnnxAdapter(_Adapter):
    synthetic_dtype = "float32"

    def __init__(self, session: Any, request: dict[str, Any]) -> None:
        self.session = session
        self.inputs = session.get_inputs()
        for item in self.inputs:
            if item.type not in _ONNX_TYPES:
                raise SampleError(f"ONNX input {item.name!r} has unsupported type {item.type}")
        if len(self.inputs) == 1:
            # One 2-D tensor: features by position (ONNX keeps no column names).
            shape = self.inputs[0].shape
            if len(shape) != 2:
                raise SampleError(f"ONNX input {self.inputs[0].name!r} has shape {shape}")
            self.n_features = shape[1] if isinstance(shape[1], int) else None
            self.synthetic_dtype = _ONNX_TYPES[self.inputs[0].type]
        else:
            # One input per column, named after it (skl2onnx's layout for DataFrames).
            self.feature_names = [item.name for item in self.inputs]
            self.n_features = len(self.inputs)

    def prepare(self, frame: Any) -> Any:
        if self.feature_names:
            return frame
        return frame.to_numpy().astype(_ONNX_TYPES[self.inputs[0].type])

    def _feeds(self, sample: Any) -> dict[str, Any]:
        import numpy as np

        if not self.feature_names:
            return {self.inputs[0].name: np.asarray(sample, dtype=_ONNX_TYPES[self.inputs[0].type])}
        feeds = {}
        for item in self.inputs:
            column = np.asarray(sample[item.name]).astype(_ONNX_TYPES[item.type])
            feeds[item.name] = column.reshape(-1, 1) if len(item.shape) == 2 else column
        return feeds

    def predict(self, sample: Any) -> Any:
        import numpy as np

        output = self.session.run(None, self._feeds(sample))[0]
        return output if isinstance(output, list) else np.asarray(output)

    def input_schema(self, sample: Any) -> list[dict[str, str]]:
        if self.feature_names:
            return [
                {"name": item.name, "dtype": _dtype_name(_ONNX_TYPES[item.type])}
                for item in self.inputs
            ]
        return super().input_schema(sample)


ADAPTERS = {
    "pickle": _SklearnAdapter,
    "joblib": _SklearnAdapter,
    "skops": _SklearnAdapter,
    "xgboost-json": _XGBoostAdapter,
    "xgboost-ubj": _XGBoostAdapter,
    "lightgbm-text": _LightGBMAdapter,
    "onnx": _OnnxAdapter,
}


# --- the sample -------------------------------------------------------------------------


def _sample(adapter: _Adapter, request: dict[str, Any]) -> tuple[Any, str]:
    path = request.get("sample_path")
    if path:
        frame = _read_sample(path, int(request.get("sample_rows", 100)))
        return adapter.prepare(_order_columns(adapter, frame)), "reference"
    if adapter.feature_names is None and adapter.n_features is None:
        raise SampleError(
            "the model does not say how many features it takes; upload reference data"
        )
    import numpy as np
    import pandas as pd

    n_features = adapter.n_features or len(adapter.feature_names or [])
    values = np.random.default_rng(0).normal(size=(SYNTHETIC_ROWS, n_features))
    values = values.astype(adapter.synthetic_dtype)
    if adapter.feature_names:
        return pd.DataFrame(values, columns=adapter.feature_names), "synthetic"
    return values, "synthetic"


def _read_sample(path: str, rows: int) -> Any:
    import pandas as pd

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
        if batch is None:
            raise SampleError("reference sample has no rows")
        return batch.to_pandas()
    return pd.read_csv(path, nrows=rows, encoding="utf-8-sig")


def _order_columns(adapter: _Adapter, frame: Any) -> Any:
    if adapter.feature_names:
        missing = [n for n in adapter.feature_names if n not in frame.columns]
        if missing:
            raise SampleError(
                f"reference sample lacks the model's feature column(s): {', '.join(missing)}"
            )
        return frame[adapter.feature_names]
    if adapter.n_features is not None and len(frame.columns) != adapter.n_features:
        raise SampleError(
            f"the model was fitted without feature names and takes {adapter.n_features} "
            f"features by position, but the reference sample has {len(frame.columns)} "
            "columns; upload a sample with exactly the training columns, in order"
        )
    return frame


# --- JSON-safe output ---------------------------------------------------------------------


def _rows(sample: Any) -> int:
    return len(sample)


def _cols(sample: Any) -> int:
    return int(sample.shape[1]) if len(sample.shape) > 1 else 1


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


def _json_safe(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(_json_safe(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


if __name__ == "__main__":
    sys.exit(main())
