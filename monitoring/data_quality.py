"""Data quality of sampled live inputs, against the version's contract and reference profile.

Per feature: the missing rate against the reference's, values of the wrong type for the
contract (a number feature sent "abc", an integer feature 2.5), numbers outside the reference
range, categories the reference never had. Per window: fields the contract expects that no
sampled row carried, and fields the rows carry that the contract does not know.

Each check compares with a threshold of the monitoring policy (``drift_thresholds``:
``missing_increase``, ``type_mismatch_rate``, ``out_of_range_rate``, ``new_category_rate``;
defaults in ``drift_stats.DEFAULT_THRESHOLDS``). Pure: pandas and numpy in, figures out; the
drift window stores them and the alerts read them.

"Outside the reference range" uses the reference's smallest and largest values; "new
category" needs the reference's whole category list, which a profile keeps only when the
reference had few enough categories (no "other" bucket) -- otherwise the rate is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from monitoring import drift_stats as ds
from registry.modelkit.contract import BOOLEAN, INTEGER, NUMBER, STRING

_MISSING_FIELD = "missing_field"
_EXTRA_FIELD = "extra_field"


@dataclass
class FeatureQuality:
    live_rows: int
    missing_rate: float | None = None
    reference_missing_rate: float | None = None
    type_mismatch_rate: float | None = None
    out_of_range_rate: float | None = None
    new_category_rate: float | None = None
    issues: list[str] = field(default_factory=list)

    @property
    def missing_rate_increase(self) -> float | None:
        """The live missing rate above the reference's (a feature the reference never lacked
        counts from 0): what ``missing_increase`` and the guard's rule limit."""
        if self.missing_rate is None:
            return None
        return self.missing_rate - (self.reference_missing_rate or 0.0)

    def rates(self) -> dict[str, Any]:
        """The figures without the issue texts (a guard judges them by its own limits)."""
        return {
            "live_rows": self.live_rows,
            "missing_rate": self.missing_rate,
            "reference_missing_rate": self.reference_missing_rate,
            "missing_rate_increase": self.missing_rate_increase,
            "type_mismatch_rate": self.type_mismatch_rate,
            "out_of_range_rate": self.out_of_range_rate,
            "new_category_rate": self.new_category_rate,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.rates(), "issues": self.issues}


@dataclass
class WindowQuality:
    rows: int
    features: dict[str, FeatureQuality]
    missing_fields: list[str]
    extra_fields: list[str]

    @property
    def issues(self) -> list[str]:
        found = [f"{name}: {issue}" for name, q in self.features.items() for issue in q.issues]
        found += [f"{name}: no sampled row carries it" for name in self.missing_fields]
        found += [f"{name}: not a feature of this version" for name in self.extra_fields]
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "breach" if self.issues else ("ok" if self.rows else "no_data"),
            "rows": self.rows,
            "missing_fields": self.missing_fields,
            "extra_fields": self.extra_fields,
            "issues": self.issues,
            # Each feature's figures, which the guard's data-quality rules read.
            "per_feature": {name: q.rates() for name, q in self.features.items()},
        }


def _rate(count: int | np.integer, total: int) -> float | None:
    return float(count) / total if total else None


def _wrong_type(kind: str, present: pd.Series) -> np.ndarray:
    """Which present values the contract's ``kind`` cannot take."""
    if kind in (NUMBER, INTEGER):
        is_bool = present.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
        numbers = pd.to_numeric(present, errors="coerce").to_numpy(dtype=np.float64)
        wrong = np.isnan(numbers) | is_bool
        if kind == INTEGER:
            finite = np.isfinite(numbers)
            wrong |= finite & (numbers != np.round(numbers))
        return np.asarray(wrong, dtype=bool)
    if kind == STRING:
        return present.map(lambda v: not isinstance(v, str)).to_numpy(dtype=bool)
    if kind == BOOLEAN:
        return present.map(lambda v: not isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
    return np.zeros(len(present), dtype=bool)


def _reference_range(profile: ds.NumericProfile) -> tuple[float, float] | None:
    if not len(profile.values):
        return None
    return float(profile.values[0]), float(profile.values[-1])


def feature_quality(
    feature: dict[str, Any],
    profile: ds.NumericProfile | ds.CategoricalProfile | None,
    column: pd.Series,
    thresholds: dict[str, float],
) -> FeatureQuality:
    """One feature's checks; ``column`` holds the values as clients sent them (untyped)."""
    total = len(column)
    result = FeatureQuality(live_rows=total)
    if not total:
        return result
    missing = column.isna().to_numpy(dtype=bool)
    present = column[~missing]
    result.missing_rate = _rate(missing.sum(), total)
    if profile is not None:
        seen = profile.n + profile.missing
        result.reference_missing_rate = _rate(profile.missing, seen) or 0.0
    wrong = _wrong_type(feature.get("type", ""), present)
    result.type_mismatch_rate = _rate(wrong.sum(), total)
    valid = present[~wrong]
    if isinstance(profile, ds.NumericProfile):
        bounds = _reference_range(profile)
        if bounds is not None and len(valid):
            numbers = pd.to_numeric(valid, errors="coerce").to_numpy(dtype=np.float64)
            outside = (numbers < bounds[0]) | (numbers > bounds[1])
            result.out_of_range_rate = _rate(int(outside.sum()), total)
    elif isinstance(profile, ds.CategoricalProfile) and int(profile.ref_counts[-1]) == 0:
        known = set(profile.categories)
        new = valid.map(lambda v: str(v) not in known).to_numpy(dtype=bool)
        result.new_category_rate = _rate(int(new.sum()), total)

    increase = thresholds["missing_increase"]
    if result.missing_rate_increase is not None and result.missing_rate_increase > increase:
        result.issues.append(
            f"missing in {result.missing_rate:.1%} of rows (reference "
            f"{result.reference_missing_rate or 0.0:.1%}, allowed +{increase:.1%})"
        )
    for name, label in (
        ("type_mismatch_rate", "of the wrong type"),
        ("out_of_range_rate", "outside the reference range"),
        ("new_category_rate", "a category the reference never had"),
    ):
        value = getattr(result, name)
        if value is not None and value > thresholds[name]:
            result.issues.append(f"{value:.1%} of rows {label} (allowed {thresholds[name]:.1%})")
    return result


def window_quality(
    features: list[dict[str, Any]],
    profiles: dict[str, ds.NumericProfile | ds.CategoricalProfile],
    raw: pd.DataFrame,
    sent_fields: set[str],
    thresholds: dict[str, float] | None = None,
) -> WindowQuality:
    """Every check over a window's sampled rows ``raw`` (as sent); ``sent_fields`` are the
    field names the records carried (rows sent as lists carry positions, not names)."""
    limits = {**ds.DEFAULT_THRESHOLDS, **(thresholds or {})}
    names = [feature["name"] for feature in features]
    results = {}
    for feature in features:
        name = feature["name"]
        if name in raw.columns:
            results[name] = feature_quality(feature, profiles.get(name), raw[name], limits)
    rows = len(raw)
    missing_fields = [name for name in names if rows and name not in raw.columns]
    extra_fields = sorted(set(sent_fields) - set(names))
    return WindowQuality(
        rows=rows, features=results, missing_fields=missing_fields, extra_fields=extra_fields
    )
