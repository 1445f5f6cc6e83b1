"""Each kind of bad row, sent to a served model of each framework, gets the one error body."""

from __future__ import annotations

import httpx
import pytest

from registry.modelkit.contract import json_safe

FAMILIES = [
    "sklearn_pipeline_categorical",
    "skops_forest",
    "xgboost_json_binary",
    "lightgbm_text_binary",
    "onnx_single_input",
    "onnx_per_column",
]


def good_row(prepared) -> dict:
    row = prepared.case.rows.iloc[0]
    names = prepared.report.feature_names
    return {name: json_safe(value) for name, value in zip(names, row.tolist(), strict=True)}


def bad_requests(prepared) -> list[tuple[str, object, str, dict]]:
    """(what, request body, expected code, expected details subset)."""
    row = good_row(prepared)
    names = prepared.report.feature_names
    number = next(f["name"] for f in prepared.report.contract["features"] if f["type"] != "string")
    lacking = {k: v for k, v in row.items() if k != names[1]}
    cases = [
        (
            "missing feature",
            {"instances": [row, lacking]},
            "missing_feature",
            {"row": 1, "feature": names[1]},
        ),
        (
            "wrong type",
            {"instances": [{**row, number: "lots"}]},
            "wrong_type",
            {"row": 0, "feature": number},
        ),
        ("wrong width", {"instances": [list(row.values())[:2]]}, "wrong_width", {"row": 0}),
        ("not a list", {"instances": {"rows": [row]}}, "invalid_instances", {}),
        ("not a list either", {"instances": "age=1"}, "invalid_instances", {}),
        ("empty", {"instances": []}, "empty_instances", {}),
        ("no instances", {}, "invalid_instances", {}),
        ("row of the wrong kind", {"instances": ["age"]}, "invalid_row", {"row": 0}),
        (
            "probabilities not a bool",
            {"instances": [row], "probabilities": "yes"},
            "invalid_request",
            {},
        ),
    ]
    categories = [f["name"] for f in prepared.report.contract["features"] if f["type"] == "string"]
    if categories:
        cases.append(
            (
                "number for a category",
                {"instances": [{**row, categories[0]: 3}]},
                "wrong_type",
                {"row": 0, "feature": categories[0]},
            )
        )
    strict_nulls = [f["name"] for f in prepared.report.contract["features"] if not f["nullable"]]
    if strict_nulls:
        cases.append(
            (
                "null where the model takes none",
                {"instances": [{**row, strict_nulls[0]: None}]},
                "null_value",
                {"row": 0, "feature": strict_nulls[0]},
            )
        )
    return cases


def assert_error_body(response: httpx.Response, code: str, details: dict, what: str) -> None:
    assert response.status_code == 400, (what, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, (what, body)
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, (what, body)
    assert error["code"] == code, (what, body)
    assert isinstance(error["message"], str) and error["message"], (what, body)
    assert isinstance(error["details"], dict), (what, body)
    for key, value in details.items():
        assert error["details"].get(key) == value, (what, key, body)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_bad_row_gets_the_one_error_body(name, prepare, contract_backend):
    prepared = prepare(name, "reference")
    assert prepared.report.ok, prepared.report.error
    key = f"e-{name[:20]}"
    handle = contract_backend.slot_start(slot_key=key, bento_tag=prepared.build.bento_tag)
    try:
        url = f"{handle.url}/predict"
        for what, body, code, details in bad_requests(prepared):
            assert_error_body(httpx.post(url, json=body, timeout=30), code, details, what)
        broken = httpx.post(
            url, content=b"{not json", headers={"content-type": "application/json"}, timeout=30
        )
        assert_error_body(broken, "invalid_request", {}, "invalid JSON")
        # 12.0 for an integer feature is that integer; 12.5 reaches a model that takes it.
        row = good_row(prepared)
        integers = [
            f["name"] for f in prepared.report.contract["features"] if f["type"] == "integer"
        ]
        for feature in integers:
            assert httpx.post(url, json={"instances": [{**row, feature: 12.0}]}).status_code == 200
        # The good row still answers: nothing above broke the server.
        assert httpx.post(url, json={"instances": [row]}, timeout=30).status_code == 200
    finally:
        contract_backend.slot_stop(slot_key=key)
