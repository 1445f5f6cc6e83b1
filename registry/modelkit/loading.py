"""The one loader: every model process reads an artifact here, with the decision recorded at
validation.

Validation decides once which format a file is in and which loader reads it, and records
that on the version (``loader_decision``); the validation child, the generated services
and hence the batch children call ``load_model(path, decision)`` with that record. A file
recorded as a plain pickle is therefore never read by joblib somewhere else, nor the
other way round.

Pickle-family files are read by restricted unpicklers whose ``find_class`` resolves only
globals on the reviewed allow-list (``allowlist``), including the nested pickles joblib
writes for object arrays and every compressed joblib stream. skops files are loaded with
the trusted-type list recorded at validation (never with whatever the file names at load
time), after every type, function and method their schema names is checked against the
same allow-list.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .allowlist import (
    GlobalRefusedError,
    allowlist_version,
    canonical_name,
    is_allowed,
    resolve_allowed,
)

PICKLE = "pickle"
JOBLIB = "joblib"
SKOPS = "skops"
ONNX = "onnx"
XGBOOST_JSON = "xgboost-json"
XGBOOST_UBJ = "xgboost-ubj"
LIGHTGBM_TEXT = "lightgbm-text"

# format -> the loader that reads it. One entry per format: the decision has no options.
LOADERS = {
    PICKLE: "restricted-pickle",
    JOBLIB: "restricted-joblib",
    SKOPS: "skops-recorded-trust",
    XGBOOST_JSON: "xgboost-booster",
    XGBOOST_UBJ: "xgboost-booster",
    LIGHTGBM_TEXT: "lightgbm-booster",
    ONNX: "onnxruntime",
}


# Formats whose files name globals the allow-list judged; the others hold data only.
_JUDGED_FORMATS = frozenset({PICKLE, JOBLIB, SKOPS})


class LoaderDecisionError(ValueError):
    """The recorded loading decision is missing, malformed or for another allow-list."""


def loader_decision(fmt: str, skops_trusted: list[str] | None = None) -> dict[str, Any]:
    """The record validation stores on the version (``ModelVersion.loader``)."""
    if fmt not in LOADERS:
        raise LoaderDecisionError(f"unknown artifact format {fmt!r}")
    decision: dict[str, Any] = {
        "format": fmt,
        "loader": LOADERS[fmt],
        "allowlist_version": allowlist_version(),
    }
    if fmt == SKOPS:
        decision["skops_trusted"] = sorted(skops_trusted or [])
    return decision


def check_decision(decision: Any) -> dict[str, Any]:
    """``decision`` if it is a well-formed record for this allow-list, else raise."""
    if not isinstance(decision, dict) or decision.get("format") not in LOADERS:
        raise LoaderDecisionError(f"no valid loading decision recorded: {decision!r}")
    fmt = decision["format"]
    if decision.get("loader") != LOADERS[fmt]:
        raise LoaderDecisionError(
            f"recorded loader {decision.get('loader')!r} is not the loader of {fmt!r}"
        )
    if fmt in _JUDGED_FORMATS and decision.get("allowlist_version") != allowlist_version():
        # The list changed since validation: the file was judged by another policy (a
        # built Bento carries its own copy of the list, so it keeps loading).
        raise LoaderDecisionError(
            f"version was validated against allow-list {decision.get('allowlist_version')!r}, "
            f"this process enforces {allowlist_version()}; validate it again"
        )
    trusted = decision.get("skops_trusted")
    if fmt == SKOPS and not (
        isinstance(trusted, list) and all(isinstance(t, str) for t in trusted)
    ):
        raise LoaderDecisionError("skops decision has no recorded trusted-type list")
    return decision


def load_model(path: str | Path, decision: dict[str, Any], *, threads: int | None = None) -> Any:
    """Load the artifact at ``path`` exactly as the recorded ``decision`` says.

    ``threads`` caps the native thread pool of XGBoost and ONNX Runtime (the sandbox uses
    1); it changes how the model runs, never how the file is read.
    """
    decision = check_decision(decision)
    fmt = decision["format"]
    path = str(path)
    if fmt == PICKLE:
        return load_pickle(path)
    if fmt == JOBLIB:
        return load_joblib(path)
    if fmt == SKOPS:
        return load_skops(path, decision["skops_trusted"])
    if fmt in (XGBOOST_JSON, XGBOOST_UBJ):
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(path)
        if threads:
            booster.set_param({"nthread": threads})
        return booster
    if fmt == LIGHTGBM_TEXT:
        import lightgbm

        # A Booster read from a file ignores ``params``: its threads follow OMP_NUM_THREADS,
        # which the sandbox sets to 1.
        return lightgbm.Booster(model_file=path)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    return onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )


# --- pickle and joblib --------------------------------------------------------------------


def _find_allowed(module: str, name: str) -> Any:
    module, name = canonical_name(module, name)
    return resolve_allowed(module, name)


# joblib's array wrapper only means something to joblib's unpickler, which reads the array
# bytes that follow it; a plain pickle naming it would be read differently by the two.
_JOBLIB_ONLY = frozenset({("joblib.numpy_pickle", "NumpyArrayWrapper")})


class RestrictedUnpickler(pickle.Unpickler):
    """A plain (C) unpickler that resolves only allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        if canonical_name(module, name) in _JOBLIB_ONLY:
            raise GlobalRefusedError(module, name, "a file loaded as a plain pickle")
        return _find_allowed(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("model pickles may not use persistent ids")


def load_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()


def _restricted_joblib_unpickler() -> type:
    from joblib.numpy_pickle import NumpyUnpickler

    class RestrictedNumpyUnpickler(NumpyUnpickler):
        """joblib's unpickler with the allow-list; its nested object-array pickles go
        through this ``find_class`` too (joblib routes them to the outer unpickler's)."""

        def find_class(self, module: str, name: str) -> Any:
            return _find_allowed(module, name)

        def persistent_load(self, pid: Any) -> Any:
            raise pickle.UnpicklingError("model pickles may not use persistent ids")

    return RestrictedNumpyUnpickler


def load_joblib(path: str) -> Any:
    from joblib.numpy_pickle import _validate_fileobject_and_memmap

    unpickler_cls = _restricted_joblib_unpickler()
    # joblib's own detection of its compressors, so every stream joblib.load would
    # decompress is read here too, with the restricted unpickler.
    with (
        open(path, "rb") as raw,
        _validate_fileobject_and_memmap(raw, path, None) as (stream, _),
    ):
        if isinstance(stream, str):
            raise pickle.UnpicklingError(
                "joblib < 0.10 files keep arrays in companion files; not loaded"
            )
        return unpickler_cls(path, stream, ensure_native_byte_order=True).load()


# --- skops ----------------------------------------------------------------------------------


def skops_globals(data: bytes) -> Iterator[tuple[str, str, str]]:
    """(module, qualified name, node path) of every type, function and method a skops file's
    schema names, each once, without constructing anything.

    Bound methods are named ``Class.method`` (the method a MethodNode looks up on its object)
    so the allow-list judges what is called, not only the class it is called on.
    """
    from zipfile import ZipFile

    from skops.io._audit import Node, get_tree
    from skops.io._general import MethodNode
    from skops.io._utils import get_module, read_schema

    with ZipFile(io.BytesIO(data), "r") as archive:
        schema, load_context = read_schema(archive)
        root = get_tree(schema, load_context=load_context, trusted=None)
    seen_nodes: set[int] = set()
    seen: set[tuple[str, str]] = set()
    stack: list[tuple[Any, str]] = [(root, "root")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))
            continue
        if isinstance(node, dict):
            stack.extend((child, f"{where}.{key}") for key, child in node.items())
            continue
        if isinstance(node, type):
            found = [(get_module(node), node.__name__)]
        elif isinstance(node, Node):
            if id(node) in seen_nodes:
                continue
            seen_nodes.add(id(node))
            found = [(node.module_name, node.class_name)]
            if isinstance(node, MethodNode):
                found.append((node.module_name, f"{node.class_name}.{node.func}"))
            stack.extend(
                (child, f"{where}.{key}")
                for key, child in node.children.items()
                if not (isinstance(node, MethodNode) and key == "func")
            )
        else:
            continue  # str / BytesIO payloads: data, read by numpy/scipy without pickle
        for pair in found:
            if pair not in seen:
                seen.add(pair)
                yield (*pair, where)


def load_skops(path: str, trusted: list[str]) -> Any:
    import skops.io

    with open(path, "rb") as f:
        data = f.read()  # one read: what is checked is what is loaded
    for module, name, where in skops_globals(data):
        if not is_allowed(module, name):
            raise GlobalRefusedError(module, name, where)
    return skops.io.load(io.BytesIO(data), trusted=list(trusted))


__all__ = [
    "LOADERS",
    "GlobalRefusedError",
    "LoaderDecisionError",
    "RestrictedUnpickler",
    "check_decision",
    "load_joblib",
    "load_model",
    "load_pickle",
    "load_skops",
    "loader_decision",
    "skops_globals",
]
