"""Plotly figures for the dashboard, as plain dicts: data in, figure out, no I/O.

The page hands each figure to the browser with ``json_script`` and static/frontend/charts.js
draws it with the plotly.js bundled in the ``plotly`` package. Every function accepts empty
data and then returns a figure that says so, so a new deployment shows a readable chart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
PERCENTILE_DASH = {"p50": "solid", "p95": "dash", "p99": "dot"}
DRIFT_LEVELS = {"no_data": 0, "ok": 1, "warn": 2, "drift": 3}
# Discrete steps for the heatmap: grey no data, green ok, amber warn, red drift.
DRIFT_COLORSCALE = [
    [0.0, "#d9d9d9"],
    [0.25, "#d9d9d9"],
    [0.25, "#1a9850"],
    [0.5, "#1a9850"],
    [0.5, "#fdae61"],
    [0.75, "#fdae61"],
    [0.75, "#b2182b"],
    [1.0, "#b2182b"],
]
CONFIG = {"displaylogo": False, "responsive": True}


def version_color(version: int) -> str:
    return PALETTE[(version - 1) % len(PALETTE)] if version > 0 else "#767676"


def _iso(values: Sequence[Any]) -> list[Any]:
    return [v.isoformat() if isinstance(v, datetime) else v for v in values]


def _layout(title: str, *, y_title: str = "", x_time: bool = True, **extra: Any) -> dict:
    layout: dict[str, Any] = {
        "title": {"text": title},
        "margin": {"l": 56, "r": 16, "t": 40, "b": 40},
        "height": 280,
        "legend": {"orientation": "h", "y": -0.2},
        "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"},
        "hovermode": "x unified" if x_time else "closest",
    }
    if x_time:
        layout["xaxis"] = {"type": "date"}
    layout.update(extra)
    return layout


def _empty(title: str, message: str) -> dict:
    return {
        "data": [],
        "layout": {
            **_layout(title, x_time=False),
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [
                {"text": message, "showarrow": False, "xref": "paper", "yref": "paper"}
            ],
        },
        "config": CONFIG,
    }


def _has_traffic(series: Mapping[int, Mapping[str, Sequence[Any]]]) -> bool:
    return any(any(points.get("requests", [])) for points in series.values())


NO_TRAFFIC = "No requests in this window yet: send predictions through the gateway."


def latency_figure(series: Mapping[int, Mapping[str, Sequence[Any]]]) -> dict:
    """p50/p95/p99 per version over time; one colour per version, one dash per percentile."""
    title = "Latency (ms) by version"
    if not _has_traffic(series):
        return _empty(title, NO_TRAFFIC)
    data = []
    for version, points in sorted(series.items()):
        for q, dash in PERCENTILE_DASH.items():
            data.append(
                {
                    "type": "scatter",
                    # Markers too: a version with traffic in one bucket only is still seen.
                    "mode": "lines+markers",
                    "marker": {"size": 3},
                    "name": f"v{version} {q}",
                    "x": _iso(points["t"]),
                    "y": list(points[q]),
                    "line": {"color": version_color(version), "dash": dash},
                    "connectgaps": False,
                }
            )
    return {"data": data, "layout": _layout(title, y_title="ms"), "config": CONFIG}


def throughput_figure(series: Mapping[int, Mapping[str, Sequence[Any]]]) -> dict:
    """Requests per second per version; a bucket without requests is a gap, not a zero.

    Not stacked: a stack fills every bucket of every version (a version that served one
    request drew a line along the whole day). Markers show a lone bucket.
    """
    title = "Throughput (requests/s)"
    if not _has_traffic(series):
        return _empty(title, NO_TRAFFIC)
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "marker": {"size": 4},
            "name": f"v{version}",
            "x": _iso(points["t"]),
            "y": [
                rps if requests else None
                for rps, requests in zip(points["rps"], points["requests"], strict=True)
            ],
            "line": {"color": version_color(version)},
            "connectgaps": False,
        }
        for version, points in sorted(series.items())
    ]
    return {"data": data, "layout": _layout(title, y_title="req/s"), "config": CONFIG}


def error_rate_figure(series: Mapping[int, Mapping[str, Sequence[Any]]]) -> dict:
    """Share of requests answered 5xx, per version."""
    title = "Error rate (5xx share)"
    if not _has_traffic(series):
        return _empty(title, NO_TRAFFIC)
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": f"v{version}",
            "x": _iso(points["t"]),
            "y": list(points["error_rate"]),
            "line": {"color": version_color(version)},
            "marker": {"size": 4},
        }
        for version, points in sorted(series.items())
    ]
    layout = _layout(title, y_title="share")
    layout["yaxis"]["tickformat"] = ".1%"
    return {"data": data, "layout": layout, "config": CONFIG}


# Below this many predictions a version's cost per prediction is mostly its idle slot
# (one request "costs" the whole window): shown in words, never allowed to set the scale.
COST_MIN_PREDICTIONS = 100
COST_PER = 1000


def price_basis(prices: Mapping[str, Any], currency: str) -> str:
    return (
        f"at {prices['price_cpu_hour']:g} {currency} per CPU-hour and "
        f"{prices['price_gb_hour']:g} {currency} per GB-hour of memory"
    )


def cost_figure(costs: Sequence[Mapping[str, Any]], *, currency: str = "USD") -> dict:
    """Cost per 1,000 predictions per version (bars), in ``currency``, with the prices used.

    Versions without enough resource samples, or with fewer than COST_MIN_PREDICTIONS
    predictions, are left out of the bars (the caption names them).
    """
    title = f"Cost per 1,000 predictions ({currency})"
    known = [
        c
        for c in costs
        if c.get("cost_per_prediction") is not None
        and c.get("predictions", 0) >= COST_MIN_PREDICTIONS
    ]
    if not known:
        return _empty(
            title,
            "No cost yet: it needs resource samples of a serving slot and "
            f"at least {COST_MIN_PREDICTIONS} predictions.",
        )
    per = [c["cost_per_prediction"] * COST_PER for c in known]
    data = [
        {
            "type": "bar",
            "x": [f"v{c['version']}" for c in known],
            "y": per,
            "marker": {"color": [version_color(c["version"]) for c in known]},
            "text": [f"{value:.3g} {currency}" for value in per],
            "textposition": "auto",
            "name": f"{currency} / 1,000 predictions",
            "customdata": [
                [c["predictions"], c["cpu_seconds"], c["memory_gb_hours"]] for c in known
            ],
            "hovertemplate": f"%{{x}}: %{{y:.3g}} {currency} per 1,000 predictions<br>"
            "%{customdata[0]} predictions, CPU-seconds %{customdata[1]:.1f}, "
            "GB-hours %{customdata[2]:.3f}<extra></extra>",
        }
    ]
    layout = _layout(title, y_title=f"{currency} per 1,000", x_time=False)
    layout["annotations"] = [
        {
            "text": price_basis(known[0], currency),
            "showarrow": False,
            "xref": "paper",
            "yref": "paper",
            "x": 1,
            "y": 1.0,
            "xanchor": "right",
            "yanchor": "bottom",
            "font": {"size": 11, "color": "#555"},
        }
    ]
    return {"data": data, "layout": layout, "config": CONFIG}


def drift_heatmap_figure(
    *,
    features: Sequence[str],
    times: Sequence[datetime],
    statuses: Sequence[Sequence[str | None]],
    scores: Sequence[Sequence[float | None]],
    version: int | None,
) -> dict:
    """Drift status per feature (rows) and window end (columns); hover shows the score."""
    title = f"Drift per feature (v{version})" if version else "Drift per feature"
    if not features or not times:
        return _empty(
            title, "No drift windows yet: they are computed hourly from sampled live requests."
        )
    z = [[DRIFT_LEVELS.get(s) if s else None for s in row] for row in statuses]
    text = [
        [
            f"{s or 'no window'}" + (f" · score {v:.3f}" if v is not None else "")
            for s, v in zip(srow, vrow, strict=True)
        ]
        for srow, vrow in zip(statuses, scores, strict=True)
    ]
    data = [
        {
            "type": "heatmap",
            # Window ends as labels: a date axis around a single window zooms to milliseconds.
            "x": [t.strftime("%m-%d %H:%M") if isinstance(t, datetime) else t for t in times],
            "y": list(features),
            "z": z,
            "text": text,
            "hovertemplate": "%{y} @ %{x}<br>%{text}<extra></extra>",
            "zmin": 0,
            "zmax": 3,
            "colorscale": DRIFT_COLORSCALE,
            "colorbar": {
                "tickvals": [0.375, 1.125, 1.875, 2.625],
                "ticktext": ["no data", "ok", "warn", "drift"],
                "len": 0.9,
            },
            "xgap": 1,
            "ygap": 1,
        }
    ]
    layout = _layout(title, x_time=False, height=max(240, 110 + 36 * len(features)))
    # Slanted labels take height of their own: automargin makes room for them and the
    # standoff keeps the axis title below them (they overlapped it at a fixed margin).
    layout["xaxis"] = {
        "type": "category",
        "nticks": 8,
        "tickangle": -30,
        "automargin": True,
        "title": {"text": "window end (UTC)", "standoff": 12},
    }
    layout["yaxis"] = {"automargin": True}
    layout["hovermode"] = "closest"
    return {"data": data, "layout": layout, "config": CONFIG}


def prediction_distribution_figure(
    *,
    labels: Sequence[str],
    reference: Sequence[float],
    live: Sequence[float] | None,
    live_rows: int = 0,
    version: int | None = None,
) -> dict:
    """Share of predictions per bin/class: the reference sample against live traffic."""
    title = f"Predictions vs reference (v{version})" if version else "Predictions vs reference"
    if not labels:
        return _empty(
            title,
            "No reference predictions yet: they are asked of the slot within a minute of it "
            "serving the version.",
        )
    data = [
        {
            "type": "bar",
            "name": "reference",
            "x": list(labels),
            "y": list(reference),
            "marker": {"color": "#767676"},
        }
    ]
    if live is not None and live_rows:
        data.append(
            {
                "type": "bar",
                "name": f"live ({live_rows} sampled)",
                "x": list(labels),
                "y": list(live),
                "marker": {"color": version_color(version or 1)},
            }
        )
    layout = _layout(title, y_title="share", x_time=False, barmode="group")
    layout["yaxis"]["tickformat"] = ".0%"
    layout["xaxis"] = {"type": "category"}  # the legend sits below: no axis title to clash
    return {"data": data, "layout": layout, "config": CONFIG}


def quality_figure(*, times: Sequence[datetime], series: Mapping[int, Mapping[str, Any]]) -> dict:
    """Live accuracy (or mean absolute error) per version over the window, from labels."""
    metrics = {s["metric"] for s in series.values()}
    metric = "mae" if metrics == {"mae"} else "accuracy"
    title = "Live accuracy from labels" if metric == "accuracy" else "Live mean absolute error"
    if not series:
        return _empty(
            title,
            "No labels for this window yet: POST them to /api/v1/deployments/<name>/labels/ "
            "with the inference ids the gateway answered.",
        )
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": f"v{version}",
            "x": _iso(times),
            "y": list(s["values"]),
            "customdata": list(s["labelled"]),
            "hovertemplate": f"v{version} %{{y:.3f}} over %{{customdata}} labels<extra></extra>",
            "line": {"color": version_color(version)},
            "connectgaps": False,
        }
        for version, s in series.items()
        if s["metric"] == metric
    ]
    layout = _layout(title, y_title=metric)
    if metric == "accuracy":
        layout["yaxis"]["tickformat"] = ".0%"
        layout["yaxis"]["range"] = [0, 1]
    return {"data": data, "layout": layout, "config": CONFIG}


def confusion_matrix_figure(
    *, classes: Sequence[Any], matrix: Sequence[Sequence[int]] | None, version: int | None
) -> dict:
    """Labelled predictions of one version: true class (rows) against predicted (columns)."""
    title = f"Confusion matrix (v{version})" if version else "Confusion matrix"
    if not matrix or not any(any(row) for row in matrix):
        return _empty(title, "No labelled predictions of a classifier in this window yet.")
    names = [str(c) for c in classes]
    data = [
        {
            "type": "heatmap",
            "x": names,
            "y": names,
            "z": [list(row) for row in matrix],
            "text": [[str(v) for v in row] for row in matrix],
            "texttemplate": "%{text}",
            "hovertemplate": "true %{y}, predicted %{x}: %{z}<extra></extra>",
            "colorscale": "Blues",
            "showscale": False,
        }
    ]
    layout = _layout(title, x_time=False, height=max(260, 120 + 40 * len(names)))
    layout["xaxis"] = {"type": "category", "title": {"text": "predicted"}}
    layout["yaxis"] = {"type": "category", "title": {"text": "true"}, "autorange": "reversed"}
    return {"data": data, "layout": layout, "config": CONFIG}


def shadow_agreement_figure(windows: Sequence[Mapping[str, Any]], *, version: int) -> dict:
    """A shadow against live per minute: label agreement (left axis) and the mean absolute
    probability difference (right axis), from the gateway's per-request comparison."""
    title = f"Shadow v{version} against live"
    compared = [w for w in windows if w.get("rows")]
    if not compared:
        return _empty(
            title, "Nothing compared yet: the gateway mirrors live requests as they come."
        )
    compared.sort(key=lambda w: w["start"])
    times = _iso([w["start"] for w in compared])
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "label agreement",
            "x": times,
            "y": [w["agreement_rate"] for w in compared],
            "customdata": [w["rows"] for w in compared],
            "hovertemplate": "agreement %{y:.2%} over %{customdata} rows<extra></extra>",
            "line": {"color": PALETTE[0]},
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "mean |Δ probability|",
            "x": times,
            "y": [w["prob_abs_mean"] for w in compared],
            "yaxis": "y2",
            "hovertemplate": "mean |Δp| %{y:.4f}<extra></extra>",
            "line": {"color": PALETTE[1], "dash": "dash"},
        },
    ]
    layout = _layout(title, y_title="agreement")
    layout["yaxis"].update({"tickformat": ".0%", "range": [0, 1]})
    layout["yaxis2"] = {
        "title": {"text": "mean |Δp|"},
        "overlaying": "y",
        "side": "right",
        "rangemode": "tozero",
    }
    layout["margin"]["r"] = 56
    return {"data": data, "layout": layout, "config": CONFIG}
