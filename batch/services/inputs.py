"""Batch inputs: where they may come from, what they must contain, and staging them.

A path input is only read under ``MODELYARD_BATCH_ALLOWED_ROOTS``: the path is resolved
(symlinks included) and checked, and the file is checked again after it is opened (the
path the open file descriptor really names), so a symlink swapped in between cannot lead
outside the roots. Staging validates the rows against the version's inferred schema and
writes each chunk's features (and the id column) as an Arrow IPC file that its chunk then
maps. An input whose every row must be read to be validated (CSV; a Parquet column that
needs a cast which could fail) is staged whole before any chunk runs; a Parquet input whose
footer answers every check is staged chunk by chunk while the first chunks predict.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from core.errors import InvalidInput, NotAllowed
from registry.models import ModelVersion

PARQUET_MAGIC = b"PAR1"
_SNIFF_BYTES = 64 * 1024


def allowed_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.MODELYARD_BATCH_ALLOWED_ROOTS]


def _under_roots(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def input_path_resolve(raw: str) -> Path:
    """The real path of a server-side input, or a domain error saying why it is refused."""
    roots = allowed_roots()
    if not roots:
        raise NotAllowed(
            "Reading batch input from a server path is disabled "
            "(MODELYARD_BATCH_ALLOWED_ROOTS is empty); upload the file instead.",
            code="path_input_disabled",
        )
    if not raw or "\x00" in raw or not os.path.isabs(raw):
        raise InvalidInput("input_path must be an absolute path.", code="invalid_path")
    # Refuse a path outside the roots before touching the file system: otherwise "does not
    # exist" versus "outside the roots" would tell a caller which files exist anywhere.
    if not _under_roots(Path(os.path.normpath(raw)), roots):
        raise NotAllowed(
            f"Input path {raw!r} is outside the allowed batch input roots.",
            code="path_not_allowed",
        )
    try:
        real = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidInput(f"Input path {raw!r} does not exist.", code="input_not_found") from None
    if not _under_roots(real, roots):
        raise NotAllowed(
            f"Input path {raw!r} is outside the allowed batch input roots.",
            code="path_not_allowed",
        )
    if not real.is_file():
        raise InvalidInput(f"Input path {raw!r} is not a file.", code="invalid_path")
    return real


@contextlib.contextmanager
def input_path_open(raw: str) -> Iterator[IO[bytes]]:
    """Open a path input; the opened file itself is checked to be under the roots."""
    real = input_path_resolve(raw)
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        opened = (
            Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else real
        )
        if not _under_roots(opened, allowed_roots()):
            raise NotAllowed(
                "Input path changed to outside the allowed roots.", code="path_not_allowed"
            )
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def sniff_format(handle: IO[bytes]) -> tuple[str, bytes]:
    head = handle.read(_SNIFF_BYTES)
    handle.seek(0)
    if not head:
        raise InvalidInput("The input file is empty.", code="empty_input")
    return ("parquet" if head.startswith(PARQUET_MAGIC) else "csv"), head


# --- schema ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputPlan:
    """Which columns to read, in the model's order, and the type each must have."""

    features: list[str]
    types: dict[str, str]  # feature -> int64 | float64 | bool | string | "" (as read)
    id_column: str

    @property
    def columns(self) -> list[str]:
        return [*self.features, *([self.id_column] if self.id_column else [])]


def _portable(dtype: str) -> str:
    if re.fullmatch(r"u?int\d*", dtype or ""):
        return "int64"
    if re.fullmatch(r"float\d*", dtype or ""):
        return "float64"
    return dtype if dtype in ("bool", "string") else ""


# How a contract's logical type is read from CSV/Parquet: integers as float64 too, so 12.0
# reaches the contract (which refuses 12.5 only where the model would).
_CONTRACT_TYPES = {"number": "float64", "integer": "float64", "string": "string", "boolean": "bool"}


def input_plan(*, version: ModelVersion, header: list[str], id_column: str) -> InputPlan:
    """Match an input's columns to the version's contract; clear errors when they differ.

    Types come from the contract (registry/modelkit/contract.py), never from the data: a
    zip code column of a model that takes a category is read as strings.
    """
    signature = version.signature or {}
    inputs = signature.get("inputs") or []
    names = signature.get("feature_names")
    contract = version.contract or {}
    if contract.get("features"):
        names = [f["name"] for f in contract["features"]]
        inputs = [
            {"name": f["name"], "dtype": _CONTRACT_TYPES[f["type"]]} for f in contract["features"]
        ]
        if contract.get("names_source") == "positional" and not set(names) <= set(header):
            names = None  # fitted and uploaded without names: columns by position
    if not header:
        raise InvalidInput("The input has no columns.", code="empty_input")
    if id_column and id_column not in header:
        raise InvalidInput(
            f"The id column {id_column!r} is not in the input.",
            code="missing_columns",
            details={"missing": [id_column]},
        )
    if id_column and names and id_column in names:
        raise InvalidInput(
            f"The id column {id_column!r} is one of the model's features; name another column.",
            code="invalid_id_column",
        )
    if names:
        missing = [name for name in names if name not in header]
        if missing:
            raise InvalidInput(
                f"The input lacks {len(missing)} column(s) that {version} needs: "
                + ", ".join(missing[:20]),
                code="missing_columns",
                details={"missing": missing, "expected": names},
            )
        features = list(names)
        dtypes = {item["name"]: item.get("dtype", "") for item in inputs}
        types = {name: _portable(dtypes.get(name, "")) for name in features}
    else:
        # No feature names: columns are taken by position, as the model was trained.
        features = [column for column in header if column != id_column]
        expected = signature.get("n_features")
        if expected is not None and len(features) != int(expected):
            raise InvalidInput(
                f"{version} takes {expected} features by position; the input has "
                f"{len(features)} column(s) besides the id column.",
                code="wrong_column_count",
                details={"expected": expected, "found": len(features)},
            )
        types = {
            name: _portable(inputs[i].get("dtype", "")) if i < len(inputs) else ""
            for i, name in enumerate(features)
        }
    return InputPlan(features=features, types=types, id_column=id_column)


def chunk_rows_default(plan: InputPlan) -> int:
    """Rows per chunk when a job does not say: about ``MODELYARD_BATCH_CHUNK_MB`` of input
    values, at most ``MODELYARD_BATCH_CHUNK_ROWS`` rows. A wide input gets shorter chunks,
    as a chunk's rows are held in its child a few times over (Arrow, NumPy, the model's own
    copies); a narrow one long enough that what each chunk costs besides the model (its
    claim, count and message, the child's round trip) stays small: 1,000,000 rows on one
    worker ran at 0.82-0.84x model.predict in chunks of 250,000 and 0.76-0.79x in chunks of
    100,000 (tests/benchmarks/test_batch_bench.py). The model itself did not mind either
    size (tests/benchmarks/test_batch_child_bench.py)."""
    row_bytes = sum(32 if plan.types.get(name) == "string" else 8 for name in plan.columns)
    by_size = settings.MODELYARD_BATCH_CHUNK_MB * 2**20 // max(1, row_bytes)
    return max(1, min(settings.MODELYARD_BATCH_CHUNK_ROWS, by_size))


def csv_header(head: bytes) -> list[str]:
    if b"\x00" in head:
        raise InvalidInput(
            "The input is neither CSV nor Parquet (binary content).", code="bad_input"
        )
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            raise InvalidInput("The input is not UTF-8 encoded CSV.", code="bad_input") from exc
        text = head[: exc.start].decode("utf-8-sig")
    header = next(csv.reader(io.StringIO(text)), [])
    if not any(cell.strip() for cell in header):
        raise InvalidInput(
            "The input has no columns (the CSV header is empty).", code="empty_input"
        )
    return header


def input_header(handle: IO[bytes]) -> tuple[str, list[str]]:
    """(format, column names) of an input file, sniffed by content."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fmt, head = sniff_format(handle)
    if fmt == "csv":
        return fmt, csv_header(head)
    try:
        names = pq.ParquetFile(handle).schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(
            f"The input is not a readable Parquet file: {exc}", code="bad_input"
        ) from exc
    finally:
        handle.seek(0)
    return fmt, names


def input_check(
    *, handle: IO[bytes], version: ModelVersion, id_column: str
) -> tuple[str, InputPlan]:
    """The quick check at submission: columns, and the types of the first rows."""
    fmt, header = input_header(handle)
    plan = input_plan(version=version, header=header, id_column=id_column)
    for batch in _batches(handle, fmt, plan, header, block_size=1 << 16):
        del batch
        break
    handle.seek(0)
    return fmt, plan


# --- reading and staging -------------------------------------------------------------------


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    return {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.string(),
    }.get(name)


def _wrong_type(exc: Exception, header: list[str], plan: InputPlan) -> InvalidInput:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found = re.search(r"column #(\d+)", message)
    column = header[int(found.group(1))] if found and int(found.group(1)) < len(header) else None
    expected = plan.types.get(column or "", "") if column else ""
    text = (
        f"Column {column!r} does not hold {expected or 'the expected'} values: {message}"
        if column
        else f"The input does not match the model's schema: {message}"
    )
    return InvalidInput(text, code="wrong_type", details={"column": column, "expected": expected})


def _parquet_types_check(schema: Any, plan: InputPlan) -> None:
    """Refuse a Parquet column whose declared type can never hold the planned one."""
    import pyarrow as pa

    for name in plan.features:
        want, have = plan.types.get(name, ""), schema.field(name).type
        numeric = (
            pa.types.is_integer(have) or pa.types.is_floating(have) or pa.types.is_boolean(have)
        )
        if want in ("int64", "float64", "bool") and not (numeric or pa.types.is_null(have)):
            raise InvalidInput(
                f"Column {name!r} is {have} in the input; {want} values are expected.",
                code="wrong_type",
                details={"column": name, "expected": want, "found": str(have)},
            )


def _batches(
    handle: IO[bytes],
    fmt: str,
    plan: InputPlan,
    header: list[str],
    block_size: int = 16 << 20,
    rows: int | None = None,
) -> Iterator[Any]:
    """Record batches of the planned columns, cast to the planned types; from Parquet, of
    ``rows`` rows each where given (a CSV's batches follow its blocks)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "csv":
        types = {n: _arrow_type(t) for n, t in plan.types.items() if _arrow_type(t) is not None}
        try:
            reader = pacsv.open_csv(
                handle,
                read_options=pacsv.ReadOptions(block_size=block_size),
                convert_options=pacsv.ConvertOptions(
                    column_types=types, include_columns=plan.columns
                ),
            )
            for batch in reader:
                yield batch
        except pa.ArrowInvalid as exc:
            raise _wrong_type(exc, header, plan) from exc
        return
    parquet = pq.ParquetFile(handle)
    _parquet_types_check(parquet.schema_arrow, plan)
    size = rows or max(1, block_size // 64)
    # One thread: staging runs beside the model's child, and Arrow's pool of one thread per
    # core took the child's core from it (measured: 1M rows x 5 columns decoded in 27 ms
    # on one thread, 37-45 ms wall on two).
    for batch in parquet.iter_batches(batch_size=size, columns=plan.columns, use_threads=False):
        arrays = []
        for name in plan.columns:
            column = batch.column(batch.schema.get_field_index(name))
            target = _arrow_type(plan.types.get(name, ""))
            if target is not None and column.type != target:
                try:
                    column = pc.cast(column, target, safe=True)
                except pa.ArrowInvalid as exc:
                    raise InvalidInput(
                        f"Column {name!r} does not hold {plan.types[name]} values: {exc}",
                        code="wrong_type",
                        details={"column": name, "expected": plan.types[name]},
                    ) from exc
            arrays.append(column)
        yield pa.RecordBatch.from_arrays(arrays, names=plan.columns)


def input_chunks(
    *, handle: IO[bytes], fmt: str, plan: InputPlan, header: list[str], chunk_rows: int
) -> Iterator[Any]:
    """The input's rows, validated and cast to the plan, as one record batch per chunk
    (``chunk_rows`` rows each, the last one shorter)."""
    import pyarrow as pa

    pending: list[Any] = []
    pending_rows = 0

    def take(rows: int) -> Any:
        nonlocal pending, pending_rows
        if len(pending) == 1 and pending_rows == rows:  # a batch that is a chunk: no copy
            chunk, rest = pending[0], None
        else:
            table = pa.Table.from_batches(pending)
            combined, rest = table.slice(0, rows).combine_chunks(), table.slice(rows)
            (chunk,) = combined.to_batches(max_chunksize=rows)
        pending_rows = rest.num_rows if rest is not None else 0
        pending = rest.to_batches() if rest is not None and pending_rows else []
        return chunk

    for batch in _batches(handle, fmt, plan, header, rows=chunk_rows):
        if batch.num_rows:
            pending.append(batch)
            pending_rows += batch.num_rows
        while pending_rows >= chunk_rows:
            yield take(chunk_rows)
    if pending_rows:
        yield take(pending_rows)


def _cast_cannot_fail(have: Any, want: Any) -> bool:
    """Whether every value of Arrow type ``have`` converts to ``want`` exactly."""
    import pyarrow as pa

    if want is None or have == want or pa.types.is_null(have):
        return True
    if pa.types.is_boolean(have):
        return bool(pa.types.is_integer(want) or pa.types.is_floating(want))
    if want == pa.float64():  # every integer below 2**53 and every narrower float is exact
        return bool(
            pa.types.is_floating(have) or (pa.types.is_integer(have) and have.bit_width <= 32)
        )
    if want == pa.int64():  # any narrower integer (a uint64 may not fit)
        return bool(pa.types.is_integer(have) and have.bit_width < 64)
    return False


def parquet_rows_known_valid(*, handle: IO[bytes], plan: InputPlan) -> int | None:
    """The row count of a Parquet input whose footer answers every check (the planned
    columns exist and each converts exactly to its type; wrong types raise here), so its
    chunks can be staged while earlier ones predict; None if a cast could fail on some
    row, so every row has to be read before any chunk runs. Raises for an empty input."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        _parquet_types_check(schema, plan)
        exact = all(
            _cast_cannot_fail(schema.field(name).type, _arrow_type(plan.types.get(name, "")))
            for name in plan.columns
        )
        rows = parquet.metadata.num_rows
    finally:
        handle.seek(0)
    if rows == 0:
        raise InvalidInput("The input has a header but no rows.", code="empty_input")
    return rows if exact else None
