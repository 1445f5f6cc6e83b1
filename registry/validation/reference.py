"""Reference data samples (CSV or Parquet): loaded with limits, described by a schema.

The sample becomes the smoke-prediction input and the drift baseline, so every way it can
be unusable gets its own message instead of a pandas traceback.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

PARQUET_MAGIC = b"PAR1"
_SNIFF_BYTES = 64 * 1024


class ReferenceDataError(ValueError):
    """The reference data file cannot be used as a sample."""


class LabelColumnError(ReferenceDataError):
    """The upload's ``label_column`` is no column of the reference data."""


def load_reference_frame(
    path: Path,
    *,
    max_rows: int = 100_000,
    contract: dict[str, Any] | None = None,
    label_column: str | None = None,
) -> pd.DataFrame:
    """Read a CSV or Parquet sample (sniffed by content, not name) of at most ``max_rows``,
    without its ``label_column`` (true labels are never a feature, a schema column or drift).

    With the version's ``contract``, the model's feature columns are typed by it (a CSV is
    then read as text, so zip codes stay strings where the model takes categories), never
    by pandas' guesses; without one (at upload, before validation decided it) pandas reads.
    """
    features, _ = _split(_read(path, max_rows, as_text=bool(contract)), label_column)
    if contract and contract.get("features"):
        features = _typed(features, contract)
    return features


def load_reference_labels(path: Path, *, max_rows: int, label_column: str) -> pd.Series:
    """The sample's ``label_column`` as read from the file (a CSV's cells as text, so a class
    "007" stays "007"; matching labels to classes is core.quality_metrics' rule)."""
    _, labels = _split(_read(path, max_rows, as_text=True), label_column)
    return labels


def _split(frame: pd.DataFrame, label_column: str | None) -> tuple[pd.DataFrame, Any]:
    from registry.modelkit import contract as model_contract

    try:
        return model_contract.reference_split(frame, label_column)
    except model_contract.ContractError as exc:
        raise LabelColumnError(str(exc)) from exc


def _read(path: Path, max_rows: int, *, as_text: bool) -> pd.DataFrame:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        raise ReferenceDataError("reference data file is empty")
    if head.startswith(PARQUET_MAGIC):
        frame = _read_parquet(path, max_rows)
    else:
        frame = _read_csv(path, head, max_rows, as_text=as_text)
    if len(frame.columns) == 0:
        raise ReferenceDataError("reference data has no columns")
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise ReferenceDataError(f"reference data repeats column names: {', '.join(duplicated)}")
    if len(frame) == 0:
        raise ReferenceDataError("reference data has columns but no rows")
    return frame


def _typed(frame: pd.DataFrame, contract: dict[str, Any]) -> pd.DataFrame:
    from registry.modelkit import contract as model_contract

    try:
        typed = model_contract.typed_frame(contract, frame)
    except model_contract.ContractError as exc:
        raise ReferenceDataError(f"reference data does not fit the model: {exc}") from exc
    rest = frame.drop(columns=[c for c in typed.columns if c in frame.columns])
    return typed.join(rest) if len(rest.columns) else typed


def reference_rows(
    path: Path,
    *,
    contract: dict[str, Any],
    max_rows: int = 100_000,
    label_column: str | None = None,
) -> list[dict[str, Any]]:
    """The reference sample as the JSON rows a client would send the model (keyed by the
    contract's names, typed by it, null for NaN; rows the model cannot take left out)."""
    from registry.modelkit import contract as model_contract

    frame = load_reference_frame(
        path, max_rows=max_rows, contract=contract, label_column=label_column
    )
    try:
        usable = model_contract.usable_rows(contract, frame)
    except model_contract.ContractError as exc:
        raise ReferenceDataError(str(exc)) from exc
    return model_contract.frame_to_rows(contract, usable)


def _too_many_rows(count: int | str, max_rows: int) -> ReferenceDataError:
    return ReferenceDataError(
        f"reference data has {count} rows; at most {max_rows:,} are allowed "
        "(upload a sample of the training data)"
    )


def _read_parquet(path: Path, max_rows: int) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        rows = parquet.metadata.num_rows
        if rows > max_rows:
            raise _too_many_rows(f"{rows:,}", max_rows)
        if parquet.metadata.num_columns == 0:
            raise ReferenceDataError("reference data has no columns")
        return parquet.read().to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise ReferenceDataError(f"reference data is not a readable Parquet file: {exc}") from exc


def _read_csv(path: Path, head: bytes, max_rows: int, *, as_text: bool = False) -> pd.DataFrame:
    import pandas as pd

    if b"\x00" in head:
        raise ReferenceDataError("reference data is neither CSV nor Parquet (binary content)")
    try:
        text_head = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sniff boundary is fine; anything earlier is not.
        if exc.start < len(head) - 3:
            raise ReferenceDataError("reference data is not UTF-8 encoded CSV") from exc
        text_head = head[: exc.start].decode("utf-8-sig")
    header = next(csv.reader(io.StringIO(text_head)), [])
    if not any(cell.strip() for cell in header):
        raise ReferenceDataError("reference data has no columns (the CSV header row is empty)")
    # pandas would silently rename a repeated column "x" to "x.1".
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if repeated:
        raise ReferenceDataError(f"reference data repeats column names: {', '.join(repeated)}")
    try:
        frame = pd.read_csv(
            path, nrows=max_rows + 1, encoding="utf-8-sig", dtype=str if as_text else None
        )
    except pd.errors.EmptyDataError as exc:
        raise ReferenceDataError("reference data has no columns") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ReferenceDataError(f"reference data could not be parsed as CSV: {exc}") from exc
    if len(frame) > max_rows:
        raise _too_many_rows(f"more than {max_rows:,}", max_rows)
    return frame


# A contract's logical type as the schema describes a column: a portable dtype name and
# whether drift bins it (numeric) or counts it (categorical).
_CONTRACT_COLUMNS = {
    "number": ("float64", "numeric"),
    "integer": ("int64", "numeric"),
    "string": ("string", "categorical"),
    "boolean": ("bool", "categorical"),
}


def contract_schema(contract: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema of a version with a contract: its model's features, typed by the contract
    (zip codes stay categories where the model takes categories), never by pandas' reading."""
    columns = [(f["name"], *_CONTRACT_COLUMNS[f["type"]]) for f in contract["features"]]
    return [{"name": name, "dtype": dtype, "kind": kind} for name, dtype, kind in columns]


def infer_schema(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per column: name, a portable dtype name, and whether drift treats it as numeric.

    Only for data no contract types yet (the upload, before validation decided one; versions
    validated before contracts existed); ``contract_schema`` describes the rest.
    """
    import pandas as pd
    from pandas.api import types

    # Widths (int32, float32, nullable Int64...) do not matter to drift or to callers:
    # each column gets one portable dtype name.
    schema = []
    for name, series in df.items():
        dtype = series.dtype
        if types.is_bool_dtype(dtype):
            dtype_name, kind = "bool", "categorical"
        elif types.is_integer_dtype(dtype):
            dtype_name, kind = "int64", "numeric"
        elif types.is_float_dtype(dtype):
            dtype_name, kind = "float64", "numeric"
        elif types.is_datetime64_any_dtype(dtype):
            # A timestamp is not a scale whose reference bins the live data can fall into
            # (live data is always later), so it is compared as a category.
            dtype_name, kind = "datetime", "categorical"
        elif isinstance(dtype, pd.CategoricalDtype):
            dtype_name, kind = "category", "categorical"
        else:
            dtype_name, kind = "string", "categorical"
        schema.append({"name": str(name), "dtype": dtype_name, "kind": kind})
    return schema
