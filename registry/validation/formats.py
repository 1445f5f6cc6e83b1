"""Which serialization format is an uploaded artifact in? Decided by reading, never loading.

Every check here parses bytes (magic numbers, pickle opcodes, zip directories, JSON and
protobuf structure); nothing here imports or runs anything the file names.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ._pickle import (
    PickleStructureError,
    joblib_compression,
    open_pickle_stream,
    walk_pickle_file,
)

if TYPE_CHECKING:
    import onnx

FRAMEWORKS = ("sklearn", "skops", "xgboost", "lightgbm", "onnx")

PICKLE = "pickle"
JOBLIB = "joblib"
SKOPS = "skops"
ONNX = "onnx"
XGBOOST_JSON = "xgboost-json"
XGBOOST_UBJ = "xgboost-ubj"
LIGHTGBM_TEXT = "lightgbm-text"
FORMATS = (PICKLE, JOBLIB, SKOPS, ONNX, XGBOOST_JSON, XGBOOST_UBJ, LIGHTGBM_TEXT)

# Formats whose loaders read data, not code. skops only with its trusted-types check, which
# scanning.scan_artifact and the sandbox both apply.
SAFE_FORMATS = frozenset({SKOPS, ONNX, XGBOOST_JSON, XGBOOST_UBJ, LIGHTGBM_TEXT})

_FRAMEWORK_FORMATS: dict[str, tuple[str, ...]] = {
    "sklearn": (PICKLE, JOBLIB),
    "skops": (SKOPS,),
    "xgboost": (XGBOOST_JSON, XGBOOST_UBJ),
    "lightgbm": (LIGHTGBM_TEXT,),
    "onnx": (ONNX,),
}
_EXPECTED = {
    "sklearn": "a pickle/joblib file",
    "skops": "a skops (.skops zip) file",
    "xgboost": "an XGBoost model file (JSON or UBJ, from Booster.save_model)",
    "lightgbm": "a LightGBM text model file (from Booster.save_model)",
    "onnx": "an ONNX model",
}

_HEAD_BYTES = 64 * 1024
# Largest schema.json we read from a skops zip (it describes the object tree, not data).
_MAX_SKOPS_SCHEMA_BYTES = 64 * 1024**2
# Pickle protocols 0/1 have no header; they start with one of these opcodes in practice
# (MARK, GLOBAL, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE).
_OLD_PICKLE_STARTS = b"(c}])"
_UBJ_LENGTH_MARKERS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}


class ArtifactFormatError(ValueError):
    """The artifact is not in a format its declared framework can load."""


def detect_format(path: Path, framework: str) -> str:
    """Serialization format of ``path`` for the declared ``framework``.

    Raises ArtifactFormatError naming the problem when the framework is unknown, the file
    is empty, truncated, or not in a format that framework loads.
    """
    if framework not in _FRAMEWORK_FORMATS:
        raise ArtifactFormatError(
            f"unknown framework {framework!r}; expected one of: {', '.join(FRAMEWORKS)}"
        )
    path = Path(path)
    if path.stat().st_size == 0:
        raise ArtifactFormatError(f"file is empty (declared framework {framework!r})")
    if framework == "onnx":
        return _detect_onnx(path)
    head = _read_head(path)
    fmt = _sniff(path, head, framework)
    if fmt is None:
        raise _not_format_error(path, framework)
    if fmt in (PICKLE, JOBLIB):
        _check_complete_pickle(path, framework, fmt)
    return fmt


def _not_format_error(path: Path, framework: str) -> ArtifactFormatError:
    message = f"file is not {_EXPECTED[framework]} (declared framework {framework!r})"
    guessed = guess_framework(path)
    if guessed is not None and guessed != framework:
        message += f"; it looks like a {guessed} model, declare framework {guessed!r}"
    return ArtifactFormatError(message)


def guess_framework(path: Path) -> str | None:
    """The framework whose format ``path`` is in, or None (for the upload wizard)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None
        head = _read_head(path)
    except OSError:
        return None
    for framework in ("skops", "xgboost", "lightgbm", "sklearn", "onnx"):
        if _sniff(path, head, framework) is not None:
            return framework
    return None


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_HEAD_BYTES)


def _sniff(path: Path, head: bytes, framework: str) -> str | None:
    if framework == "sklearn":
        return _sniff_pickle(path, head)
    if framework == "skops":
        return SKOPS if _is_skops(path) else None
    if framework == "xgboost":
        return _sniff_xgboost(head)
    if framework == "lightgbm":
        return LIGHTGBM_TEXT if _is_lightgbm_text(head) else None
    return ONNX if _parse_onnx(path) is not None else None


# --- pickle / joblib ---------------------------------------------------------------------


def _sniff_pickle(path: Path, head: bytes) -> str | None:
    if joblib_compression(head) is not None:
        # One-byte magics (zlib's 0x78 is "x") match plenty of non-joblib files: only call
        # it joblib if the decompressed stream really starts like a pickle.
        try:
            with open_pickle_stream(path) as (stream, _):
                inner = stream.read(16)
        except Exception:  # whatever a decompressor raises on foreign data: not joblib
            return None
        return JOBLIB if _looks_like_pickle(inner) else None
    if not _looks_like_pickle(head):
        return None
    # Uncompressed joblib dumps carry their arrays in NumpyArrayWrapper objects; a plain
    # pickle.dump never names that class. The format decided here is recorded on the
    # version and picks its one loader (joblib's unpickler or a plain one) everywhere.
    return JOBLIB if _file_contains(path, b"NumpyArrayWrapper") else PICKLE


def _looks_like_pickle(head: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80:  # PROTO opcode, protocols 2..5
        return 2 <= head[1] <= 5
    return bool(head) and head[0] in _OLD_PICKLE_STARTS


def _file_contains(path: Path, needle: bytes) -> bool:
    overlap = len(needle) - 1
    with open(path, "rb") as f:
        tail = b""
        while chunk := f.read(1024**2):
            if needle in tail + chunk:
                return True
            tail = chunk[-overlap:]
    return False


def _check_complete_pickle(path: Path, framework: str, fmt: str) -> None:
    # Truncated or corrupt pickles are caught here, so the uploader hears "broken file"
    # rather than "unsafe". The walk only reads opcodes; scanning judges what they import.
    # Walked the way the loader of ``fmt`` will read it (see modelkit.loading).
    try:
        walk_pickle_file(path, joblib_arrays=fmt == JOBLIB)
    except PickleStructureError as exc:
        raise ArtifactFormatError(
            f"file is not a readable pickle/joblib file: {exc} (declared framework {framework!r})"
        ) from exc


# --- skops ------------------------------------------------------------------------------


def _is_skops(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("schema.json")
            if info.file_size > _MAX_SKOPS_SCHEMA_BYTES:
                return False
            schema = json.loads(archive.read(info))
    except (KeyError, zipfile.BadZipFile, ValueError, OSError, RuntimeError):
        return False
    return (
        isinstance(schema, dict)
        and isinstance(schema.get("protocol"), int)
        and "__class__" in schema
        and "__module__" in schema
    )


# --- xgboost / lightgbm ------------------------------------------------------------------


def _sniff_xgboost(head: bytes) -> str | None:
    stripped = head.lstrip()
    if stripped.startswith(b"{") and b'"learner"' in stripped[:4096]:
        return XGBOOST_JSON
    # UBJSON object: "{", then each key as <length marker><length><bytes> without the
    # "S" string marker. XGBoost's model starts with the "learner" key.
    if head[:1] == b"{" and head[1:2] in _UBJ_LENGTH_MARKERS:
        fmt = _UBJ_LENGTH_MARKERS[head[1:2]]
        size = struct.calcsize(fmt)
        if len(head) >= 2 + size:
            (length,) = struct.unpack(fmt, head[2 : 2 + size])
            if head[2 + size : 2 + size + length] == b"learner":
                return XGBOOST_UBJ
    return None


def _is_lightgbm_text(head: bytes) -> bool:
    lines = head.split(b"\n", 8)
    if lines[0].strip() != b"tree":
        return False
    return any(line.startswith(b"version=") for line in lines[1:])


# --- onnx -------------------------------------------------------------------------------


def _parse_onnx(path: Path) -> onnx.ModelProto | None:
    import onnx  # imported lazily: only ONNX uploads pay for it
    from google.protobuf.message import DecodeError

    try:
        # Parsing protobuf is data-only; external tensor files are never opened here.
        model = onnx.load_model(str(path), format="protobuf", load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError):
        return None
    # Random bytes occasionally decode as an empty-ish protobuf; a model has a graph.
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        return None
    return model


def _detect_onnx(path: Path) -> str:
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = _parse_onnx(path)
    if model is None:
        raise _not_format_error(path, "onnx")
    if any(uses_external_data(tensor) for tensor in model.graph.initializer):
        raise ArtifactFormatError(
            "ONNX model keeps its weights in external data files, which cannot be uploaded "
            "with it; save it as a single file (save_as_external_data=False)"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactFormatError(f"ONNX model is invalid: {exc}") from exc
    return ONNX
