"""Every framework, format and shape: validated → built → served → batch, all equal to the
model's own predict/predict_proba (the full matrix through validation and the generated
service; tests/contract/test_live.py drives a representative subset through the live stack).
"""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from registry.modelkit.contract import json_safe
from registry.models import ModelVersion
from tests.contract.conftest import batch_predict, staged_table
from tests.models import contract_cases

CASES = sorted(contract_cases())
ROWS = 25


def rows_for(prepared, frame: pd.DataFrame) -> tuple[list[dict], list[list]]:
    """The same rows keyed by the contract's names and as positional lists."""
    names = prepared.report.feature_names
    positional = [[json_safe(v) for v in row] for row in frame.itertuples(index=False)]
    return [dict(zip(names, row, strict=True)) for row in positional], positional


def sample_frame(prepared) -> pd.DataFrame:
    """Client rows; a NaN in the first row where the model takes missing values."""
    frame = prepared.case.rows.head(ROWS).copy()
    nullable = {f["name"] for f in prepared.report.contract["features"] if f["nullable"]}
    names = dict(zip(frame.columns, prepared.report.feature_names, strict=True))
    # (ONNX takes NaN too, but the sklearn model it was converted from, our yardstick, not.)
    if names["income"] in nullable and prepared.case.framework != "onnx":
        frame.loc[frame.index[0], "income"] = np.nan
    return frame


def assert_same(answered, expected) -> None:
    expected = np.asarray(expected)
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(
            np.asarray(answered, dtype=float), expected, rtol=1e-5, atol=1e-6
        )
    else:
        assert json_safe(list(answered)) == json_safe(expected.tolist())


def version_for(prepared) -> ModelVersion:
    report = prepared.report
    return ModelVersion(
        contract=report.contract,
        signature={"feature_names": report.feature_names, "n_features": report.n_features},
    )


@pytest.mark.parametrize("variant", ["reference", "none"])
@pytest.mark.parametrize("name", CASES)
def test_model_answers_like_itself_when_served_and_in_batch(
    name, variant, prepare, contract_backend, contract_home, tmp_path
):
    prepared = prepare(name, variant)
    report, case = prepared.report, prepared.case
    assert report.ok, report.error
    assert report.sample_source == ("reference" if variant == "reference" else "synthetic")
    contract = report.contract
    if case.classes is not None:
        assert contract["output"]["classes"] == json_safe(case.classes)
    if name == "sklearn_pipeline_categorical":
        # Zip codes look numeric; the model's encoder knows them as strings.
        types = {f["name"]: f["type"] for f in contract["features"]}
        assert types["zip"] == "string" and types["plan"] == "string"

    frame = sample_frame(prepared)
    expected = case.predict(frame)
    expected_proba = case.predict_proba(frame) if case.predict_proba else None
    keyed, positional = rows_for(prepared, frame)

    handle = contract_backend.slot_start(
        slot_key=f"m-{name[:20]}-{variant}", bento_tag=prepared.build.bento_tag
    )
    try:
        for rows in (keyed, positional):
            answer = httpx.post(f"{handle.url}/predict", json={"instances": rows}, timeout=60)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert_same(body["predictions"], expected)
            if expected_proba is not None:
                np.testing.assert_allclose(body["probabilities"], expected_proba, atol=1e-5)
                assert body["classes"] == json_safe(case.classes)
            else:
                assert "probabilities" not in body and "classes" not in body
        smoke = httpx.post(
            f"{handle.url}/predict", json={"instances": report.smoke_rows}, timeout=60
        ).json()
        # What the rollout replays (BLAS may differ in the last bit on fewer rows).
        assert_same(smoke["predictions"], report.predictions_preview)
    finally:
        contract_backend.slot_stop(slot_key=f"m-{name[:20]}-{variant}")

    version = version_for(prepared)
    csv_path, parquet_path = tmp_path / "in.csv", tmp_path / "in.parquet"
    frame.to_csv(csv_path, index=False)
    frame.to_parquet(parquet_path, index=False)
    if contract["names_source"] == "positional":
        renamed = frame.set_axis(report.feature_names, axis=1)
        renamed.to_csv(csv_path, index=False)
        renamed.to_parquet(parquet_path, index=False)
    tables = [
        staged_table(version, csv_path, "csv"),
        staged_table(version, parquet_path, "parquet"),
    ]
    for out in batch_predict(contract_home, prepared.build.bento_tag, tables, tmp_path):
        assert_same(out["prediction"].tolist(), expected)
        if expected_proba is not None:
            columns = [f"probability_{label}" for label in case.classes]
            assert [c for c in out.columns if c.startswith("probability_")] == columns
            np.testing.assert_allclose(out[columns].to_numpy(), expected_proba, atol=1e-5)
