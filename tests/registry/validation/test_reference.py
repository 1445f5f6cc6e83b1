from __future__ import annotations

import pandas as pd
import pytest

from registry.validation.reference import ReferenceDataError, infer_schema, load_reference_frame
from tests.registry.validation.helpers import FEATURES


def test_load_reference_frame_reads_csv(reference_csv, reference_frame):
    frame = load_reference_frame(reference_csv)

    assert list(frame.columns) == [*FEATURES, "label"]
    assert len(frame) == len(reference_frame)


def test_load_reference_frame_reads_parquet_by_content_not_name(
    reference_parquet, reference_frame, tmp_path
):
    path = tmp_path / "reference.csv"  # misleading name: the content decides
    path.write_bytes(reference_parquet.read_bytes())

    frame = load_reference_frame(path)

    pd.testing.assert_frame_equal(frame, reference_frame.reset_index(drop=True))


def test_load_reference_frame_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")

    with pytest.raises(ReferenceDataError, match="file is empty"):
        load_reference_frame(path)


def test_load_reference_frame_rejects_csv_without_columns(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("\n\n")

    with pytest.raises(ReferenceDataError, match="no columns"):
        load_reference_frame(path)


def test_load_reference_frame_rejects_csv_with_header_only(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,c\n")

    with pytest.raises(ReferenceDataError, match="no rows"):
        load_reference_frame(path)


def test_load_reference_frame_rejects_parquet_without_rows(tmp_path, reference_frame):
    path = tmp_path / "empty.parquet"
    reference_frame.head(0).to_parquet(path)

    with pytest.raises(ReferenceDataError, match="no rows"):
        load_reference_frame(path)


def test_load_reference_frame_rejects_binary_file(tmp_path):
    path = tmp_path / "image.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))

    with pytest.raises(ReferenceDataError, match="neither CSV nor Parquet"):
        load_reference_frame(path)


def test_load_reference_frame_rejects_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\x01" * 100)

    with pytest.raises(ReferenceDataError, match="not a readable Parquet file"):
        load_reference_frame(path)


@pytest.mark.parametrize("fixture", ["reference_csv", "reference_parquet"])
def test_load_reference_frame_rejects_too_many_rows(request, fixture):
    path = request.getfixturevalue(fixture)

    with pytest.raises(ReferenceDataError, match="at most 10 are allowed"):
        load_reference_frame(path, max_rows=10)


def test_load_reference_frame_rejects_repeated_column_names(tmp_path):
    path = tmp_path / "dupes.csv"
    path.write_text("a,b,a\n1,2,3\n")

    with pytest.raises(ReferenceDataError, match="repeats column names: a"):
        load_reference_frame(path)


def test_infer_schema_names_dtype_and_kind_per_column():
    frame = pd.DataFrame(
        {
            "price": [1.5, 2.0],
            "count": pd.Series([1, 2], dtype="int32"),
            "active": [True, False],
            "city": ["Oslo", "Lima"],
            "tier": pd.Categorical(["a", "b"]),
        }
    )

    assert infer_schema(frame) == [
        {"name": "price", "dtype": "float64", "kind": "numeric"},
        {"name": "count", "dtype": "int64", "kind": "numeric"},
        {"name": "active", "dtype": "bool", "kind": "categorical"},
        {"name": "city", "dtype": "string", "kind": "categorical"},
        {"name": "tier", "dtype": "category", "kind": "categorical"},
    ]


def test_infer_schema_of_loaded_csv(reference_csv):
    schema = infer_schema(load_reference_frame(reference_csv))

    assert schema[0] == {"name": "age", "dtype": "float64", "kind": "numeric"}
    assert schema[-1] == {"name": "label", "dtype": "int64", "kind": "numeric"}
