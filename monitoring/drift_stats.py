"""Drift statistics, vectorised with numpy/scipy; no Django here.

The reference sample is profiled once per version (:func:`numeric_profile`,
:func:`categorical_profile`); each live window is then compared against the profile without
touching the reference rows again:

- numeric: PSI over reference-quantile bins, and the exact two-sample Kolmogorov-Smirnov
  statistic. KS needs the reference's ECDF only at its distinct values, so the profile keeps
  those values and their cumulative counts; the live column is located among them with ONE
  ``searchsorted`` (no sort of the live data, no per-row Python). The p-value is scipy's
  asymptotic one (what ``ks_2samp`` uses for samples this large).
- categorical: counts over the reference's most frequent categories plus an "other" bucket;
  chi-square test of homogeneity, Jensen-Shannon distance (base 2, in [0, 1]) and PSI.

Why both an effect size and a p-value decide the status: with a million live rows every
tiny difference is "significant", and with a 200-row reference a real shift may not be; a
feature is flagged when the effect is large (PSI / KS D / JS over the threshold) and, for
the tests that have one, the p-value is below ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

OTHER = "__other__"
_EPS = 1e-4  # floor for bin proportions in PSI (an empty bin would make it infinite)

DEFAULT_THRESHOLDS: dict[str, float] = {
    "psi_warn": 0.1,
    "psi_drift": 0.25,
    "ks_warn": 0.1,
    "ks_drift": 0.2,
    "js_warn": 0.1,
    "js_drift": 0.2,
    "alpha": 0.01,
    # Data quality (monitoring/data_quality.py): rates of sampled rows.
    "missing_increase": 0.1,
    "type_mismatch_rate": 0.01,
    "out_of_range_rate": 0.05,
    "new_category_rate": 0.05,
}


@dataclass
class NumericProfile:
    edges: np.ndarray  # interior bin edges (reference quantiles), ascending, unique
    ref_bin_counts: np.ndarray  # len(edges) + 1
    values: np.ndarray  # distinct reference values, ascending
    cum_counts: np.ndarray  # reference rows <= values[j]
    n: int
    missing: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "ref_bin_counts": self.ref_bin_counts.tolist(),
            "n": self.n,
            "missing": self.missing,
        }


@dataclass
class CategoricalProfile:
    categories: list[str]  # the most frequent reference categories; OTHER is implied last
    ref_counts: np.ndarray  # len(categories) + 1 (the last is OTHER)
    n: int
    missing: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "categories": self.categories,
            "ref_counts": self.ref_counts.tolist(),
            "n": self.n,
            "missing": self.missing,
        }


@dataclass
class FeatureResult:
    status: str
    live_rows: int
    missing_rate: float | None = None
    psi: float | None = None
    ks: float | None = None
    ks_pvalue: float | None = None
    chi2: float | None = None
    chi2_pvalue: float | None = None
    js: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "live_rows": self.live_rows,
            "missing_rate": self.missing_rate,
            "psi": self.psi,
            "ks": self.ks,
            "ks_pvalue": self.ks_pvalue,
            "chi2": self.chi2,
            "chi2_pvalue": self.chi2_pvalue,
            "js": self.js,
        }


# --- profiles -------------------------------------------------------------------------------


def _as_float(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array


def numeric_profile(values: Any, *, bins: int = 10) -> NumericProfile:
    """Pre-bin a numeric reference column: quantile edges, bin counts, distinct values."""
    array = _as_float(values)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        raise ValueError("a numeric reference column needs at least one finite value")
    quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    # Repeated quantiles (a discrete feature, e.g. counts) collapse into one edge.
    edges = np.unique(quantiles)
    ref_bins = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=edges.size + 1)
    distinct, counts = np.unique(finite, return_counts=True)
    return NumericProfile(
        edges=edges,
        ref_bin_counts=ref_bins.astype(np.int64),
        values=distinct,
        cum_counts=np.cumsum(counts).astype(np.int64),
        n=int(finite.size),
        missing=int(array.size - finite.size),
    )


def _category_strings(values: Any) -> np.ndarray:
    """Categories compare as strings (JSON carries 1, "1" and true alike); None stays None."""
    array = np.asarray(values, dtype=object).ravel()
    return np.array(
        [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in array],
        dtype=object,
    )


def categorical_profile(values: Any, *, max_categories: int = 20) -> CategoricalProfile:
    """Reference category counts: the ``max_categories`` most frequent plus "other"."""
    array = _category_strings(values)
    present = array[array != None]  # noqa: E711 - element-wise comparison
    if present.size == 0:
        raise ValueError("a categorical reference column needs at least one value")
    names, counts = np.unique(present.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    keep = order[:max_categories]
    categories = [str(names[i]) for i in keep]
    ref_counts = np.append(counts[keep], counts.sum() - counts[keep].sum()).astype(np.int64)
    return CategoricalProfile(
        categories=categories,
        ref_counts=ref_counts,
        n=int(present.size),
        missing=int(array.size - present.size),
    )


# --- comparisons ----------------------------------------------------------------------------


def psi(ref_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Population stability index between two binnings of the same bins."""
    p = np.maximum(ref_counts / max(ref_counts.sum(), 1), _EPS)
    q = np.maximum(live_counts / max(live_counts.sum(), 1), _EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_against_profile(profile: NumericProfile, live_sorted: np.ndarray) -> tuple[float, float]:
    """Exact two-sample KS statistic D of ``live_sorted`` (finite, ascending) against the
    profile, and its p-value.

    On ``[v_j, v_{j+1})`` the reference ECDF is constant (``c_j``) and the live ECDF rises
    from ``F(v_j)`` to ``F(v_{j+1}-)``, so ``D`` is the largest gap at those two ends; both
    come from locating the distinct reference values in the sorted live column (two
    ``searchsorted`` of the reference into the live data, the cheap direction).
    """
    n_live, n_ref = live_sorted.size, profile.n
    values = profile.values
    live_le = np.searchsorted(live_sorted, values, side="right")  # live <= v_j
    live_lt = np.searchsorted(live_sorted, values, side="left")  # live < v_j
    next_lt = np.append(live_lt[1:], n_live)  # live < v_{j+1}; all live after the last
    ref_cdf = profile.cum_counts / n_ref  # F_ref(v_j)
    statistic = float(
        max(
            live_lt[0] / n_live,  # before the first reference value F_ref is 0
            np.max(np.abs(ref_cdf - live_le / n_live)),
            np.max(np.abs(ref_cdf - next_lt / n_live)),
        )
    )
    en = n_ref * n_live / (n_ref + n_live)
    # The same asymptotic p-value as scipy.stats.ks_2samp(method="asymp").
    pvalue = float(np.clip(stats.kstwo.sf(statistic, np.round(en)), 0.0, 1.0))
    return statistic, pvalue


def live_bin_counts(profile: NumericProfile, live_sorted: np.ndarray) -> np.ndarray:
    """Live rows per reference bin ``(e_{i-1}, e_i]`` from the sorted live column."""
    upto = np.searchsorted(live_sorted, profile.edges, side="right")  # live <= e_i
    return np.diff(np.concatenate([[0], upto, [live_sorted.size]]))


def _level(value: float | None, warn: float, drift: float) -> int:
    if value is None or not np.isfinite(value):
        return 0
    return 2 if value >= drift else 1 if value >= warn else 0


_STATUS = {0: "ok", 1: "warn", 2: "drift"}


def statistic_levels(figures: dict[str, Any], thresholds: dict[str, float]) -> dict[str, int]:
    """The level (0 ok, 1 warn, 2 drift) each statistic of one feature's figures reaches:
    PSI on its own, KS and JS only where their test is significant (p < alpha). A feature's
    status is the highest; the one rule both the comparison and a retrain request (which
    names the statistic that reached drift) read."""
    t = {**DEFAULT_THRESHOLDS, **thresholds}
    levels = {"psi": _level(figures.get("psi"), t["psi_warn"], t["psi_drift"])}
    for stat, pvalue in (("ks", "ks_pvalue"), ("js", "chi2_pvalue")):
        if figures.get(stat) is None:
            continue
        significant = figures.get(pvalue) is not None and figures[pvalue] < t["alpha"]
        levels[stat] = (
            _level(figures[stat], t[f"{stat}_warn"], t[f"{stat}_drift"]) if significant else 0
        )
    return levels


def numeric_drift(
    profile: NumericProfile,
    live: Any,
    *,
    thresholds: dict[str, float] | None = None,
    min_rows: int = 1,
) -> FeatureResult:
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    array = _as_float(live)
    finite = array[np.isfinite(array)]
    missing_rate = float(1 - finite.size / array.size) if array.size else None
    if finite.size < min_rows:
        return FeatureResult(
            status="no_data", live_rows=int(finite.size), missing_rate=missing_rate
        )
    # One sort of the live column (fast in numpy 2) makes both tests a few searchsorted
    # calls of the reference into it, instead of a million searches into the reference.
    live_sorted = np.sort(finite)
    psi_value = psi(profile.ref_bin_counts, live_bin_counts(profile, live_sorted))
    ks_value, ks_p = ks_against_profile(profile, live_sorted)
    level = max(statistic_levels({"psi": psi_value, "ks": ks_value, "ks_pvalue": ks_p}, t).values())
    return FeatureResult(
        status=_STATUS[level],
        live_rows=int(finite.size),
        missing_rate=missing_rate,
        psi=psi_value,
        ks=ks_value,
        ks_pvalue=ks_p,
    )


def categorical_counts(profile: CategoricalProfile, live: Any) -> tuple[np.ndarray, int, int]:
    """Live counts over the profile's categories + other; (counts, present rows, all rows)."""
    import pandas as pd

    array = _category_strings(live)
    codes = pd.Index(profile.categories, dtype=object).get_indexer(array).astype(np.int64)
    present = np.array([v is not None for v in array], dtype=bool)
    # Unknown categories (code -1 but present) go to the "other" bucket at the end.
    codes = np.where(codes < 0, len(profile.categories), codes)[present]
    counts = np.bincount(codes, minlength=len(profile.categories) + 1)
    return counts, int(present.sum()), int(array.size)


def categorical_drift(
    profile: CategoricalProfile,
    live: Any,
    *,
    thresholds: dict[str, float] | None = None,
    min_rows: int = 1,
) -> FeatureResult:
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    counts, present, total = categorical_counts(profile, live)
    missing_rate = float(1 - present / total) if total else None
    if present < min_rows:
        return FeatureResult(status="no_data", live_rows=present, missing_rate=missing_rate)
    table = np.vstack([profile.ref_counts, counts])
    table = table[:, table.sum(axis=0) > 0]  # a bucket empty in both says nothing
    if table.shape[1] > 1:
        chi2, chi2_p, _, _ = stats.chi2_contingency(table, correction=False)
    else:
        chi2, chi2_p = 0.0, 1.0
    p = profile.ref_counts / profile.ref_counts.sum()
    q = counts / counts.sum()
    js = float(_js_distance(p, q))
    psi_value = psi(profile.ref_counts, counts)
    levels = statistic_levels({"psi": psi_value, "js": js, "chi2_pvalue": chi2_p}, t)
    return FeatureResult(
        status=_STATUS[max(levels.values())],
        live_rows=present,
        missing_rate=missing_rate,
        psi=psi_value,
        chi2=float(chi2),
        chi2_pvalue=float(chi2_p),
        js=js,
    )


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    value = jensenshannon(p, q, base=2)
    return 0.0 if not np.isfinite(value) else float(value)


# --- (de)serialising a profile --------------------------------------------------------------


def profiles_to_storage(
    profiles: dict[str, NumericProfile | CategoricalProfile],
) -> tuple[list[dict[str, Any]], bytes]:
    """JSON-able feature descriptions plus an ``.npz`` with the numeric arrays."""
    import io

    described: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for index, (name, profile) in enumerate(profiles.items()):
        if isinstance(profile, NumericProfile):
            described.append({"name": name, "kind": "numeric", **profile.describe()})
            arrays[f"v{index}"] = profile.values
            arrays[f"c{index}"] = profile.cum_counts
        else:
            described.append({"name": name, "kind": "categorical", **profile.describe()})
    buffer = io.BytesIO()
    # Named: else numpy's stubs read **arrays as possibly allow_pickle. The arrays are numeric,
    # and profile_arrays_load reads with allow_pickle=False anyway.
    np.savez(buffer, allow_pickle=False, **arrays)
    return described, buffer.getvalue()


def profiles_from_storage(
    described: list[dict[str, Any]], blob: bytes | memoryview
) -> dict[str, NumericProfile | CategoricalProfile]:
    import io

    arrays = np.load(io.BytesIO(bytes(blob)), allow_pickle=False)
    profiles: dict[str, NumericProfile | CategoricalProfile] = {}
    for index, item in enumerate(described):
        if item["kind"] == "numeric":
            profiles[item["name"]] = NumericProfile(
                edges=np.asarray(item["edges"], dtype=np.float64),
                ref_bin_counts=np.asarray(item["ref_bin_counts"], dtype=np.int64),
                values=arrays[f"v{index}"],
                cum_counts=arrays[f"c{index}"],
                n=item["n"],
                missing=item.get("missing", 0),
            )
        else:
            profiles[item["name"]] = CategoricalProfile(
                categories=list(item["categories"]),
                ref_counts=np.asarray(item["ref_counts"], dtype=np.int64),
                n=item["n"],
                missing=item.get("missing", 0),
            )
    return profiles


def worst_status(statuses: list[str]) -> str:
    order = {"no_data": 0, "ok": 1, "warn": 2, "drift": 3}
    if not statuses:
        return "no_data"
    return max(statuses, key=lambda s: order.get(s, 0))
