"""An example input row for a version, for the "try a prediction" box and the curl sample.

Read from the version's model contract (``contract["features"]``: ordered names with a
logical type each) when validation recorded one; else from the signature the validation
child inferred (``signature["inputs"]``: name + dtype), else from the reference sample's
schema (``reference_schema``: name + dtype). The values are the first row validation
proved the model on (its smoke rows: a reference row, or a synthetic one), so the example
is one the model answers; without those, neutral placeholders of each type (an empty string
for a category, which a model that refuses unknown categories would refuse).
"""

from __future__ import annotations

from typing import Any

from registry.models import ModelVersion


def _placeholder(kind: str) -> Any:
    kind = (kind or "").lower()
    if "bool" in kind:
        return False
    if "int" in kind:
        return 0
    if any(word in kind for word in ("float", "double", "number", "numeric", "decimal")):
        return 0.0
    if any(word in kind for word in ("str", "object", "category", "categorical", "text")):
        return ""
    return 0.0  # an unnamed type: models are numeric far more often than not


def _features(entries: Any, *type_keys: str) -> list[tuple[str, str]]:
    if not isinstance(entries, list):
        return []
    out = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name"):
            kind = next((str(entry[k]) for k in type_keys if entry.get(k)), "")
            out.append((str(entry["name"]), kind))
    return out


def example_features(version: ModelVersion) -> tuple[list[tuple[str, str]], str]:
    """``([(name, type), ...], source)``; source names the field read (empty: none known)."""
    contract = version.contract if isinstance(version.contract, dict) else {}
    found = _features(contract.get("features"), "type", "logical_type", "kind")
    if found:
        return found, "contract"
    signature = version.signature if isinstance(version.signature, dict) else {}
    found = _features(signature.get("inputs"), "dtype", "type")
    if not found and signature.get("feature_names"):
        found = [(str(name), "") for name in signature["feature_names"]]
    if found:
        return found, "signature"
    found = _features(version.reference_schema, "dtype", "type")
    if found:
        return found, "reference_schema"
    return [], ""


def _proven_row(version: ModelVersion, names: list[str]) -> dict[str, Any] | None:
    report = version.validation_report if isinstance(version.validation_report, dict) else {}
    load = report.get("load")
    if not isinstance(load, dict):
        load = {}
    rows = load.get("smoke_rows") or []
    first = rows[0] if rows else None
    if isinstance(first, dict) and set(first) == set(names):
        return {name: first[name] for name in names}
    if isinstance(first, list) and len(first) == len(names):
        return dict(zip(names, first, strict=True))
    return None


def example_rows(version: ModelVersion) -> tuple[list[dict[str, Any]], str]:
    """One example row keyed by feature name (in the model's order), and where it came from."""
    features, source = example_features(version)
    if not features:
        return [], ""
    proven = _proven_row(version, [name for name, _ in features])
    if proven is not None:
        return [proven], source
    return [{name: _placeholder(kind) for name, kind in features}], source
