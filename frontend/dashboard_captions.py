"""The words beside each dashboard chart and in its table: what a screen reader, or a person
who cannot read the chart, is told (figures come from frontend/charts.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from frontend import charts


def figure_text(value: float | None, spec: str) -> str:
    """A figure as the tables show it: formatted by ``spec``, or a dash when there is none."""
    return "—" if value is None else format(value, spec)


def latency_summary(tiles: list[dict]) -> str:
    parts = [
        f"v{t['version']}: p50 {t['p50']} ms, p95 {t['p95']} ms, p99 {t['p99']} ms"
        for t in tiles
        if t["requests"]
    ]
    return "; ".join(parts) or "No requests in this window."


def traffic_summary(tiles: list[dict], window: str) -> str:
    parts = [
        f"v{t['version']}: {t['requests']} requests ({t['rps']}/s)" for t in tiles if t["requests"]
    ]
    return "; ".join(parts) or f"No requests in the last {window}."


def error_summary(tiles: list[dict]) -> str:
    parts = [f"v{t['version']}: {t['error_rate']} errors" for t in tiles if t["requests"]]
    return "; ".join(parts) or "No requests, so no errors."


def cost_per_1000(cost: dict[str, Any]) -> str:
    per = cost.get("cost_per_prediction")
    if per is None:
        return "—"
    if cost.get("predictions", 0) < charts.COST_MIN_PREDICTIONS:
        count = cost["predictions"]
        return f"— ({count} prediction{'' if count == 1 else 's'}: too few)"
    return format(per * charts.COST_PER, ".3g")


def cost_summary(tiles: list[dict], costs: list[dict[str, Any]]) -> str:
    if not costs:
        return "No resource samples yet."
    currency = settings.MODELYARD_PRICE_CURRENCY
    parts = []
    for t in tiles:
        figure = t["cost_per_1000"]
        if figure.startswith("—"):
            why = figure[1:].strip(" ()") or "no cost yet"
            parts.append(f"v{t['version']}: {why}")
        else:
            parts.append(
                f"v{t['version']}: {figure} {currency} per 1,000 predictions "
                f"({t['cpu_seconds']} CPU-seconds, {t['gb_hours']} GB-hours)"
            )
    return "; ".join(parts) + f"; {charts.price_basis(costs[0], currency)}."


def drift_summary(drift: dict) -> str:
    if not drift["features"]:
        return "No drift windows in this range."
    latest = {f: row[-1] for f, row in zip(drift["features"], drift["statuses"], strict=True)}
    count = len(drift["times"])
    return f"{count} window{'' if count == 1 else 's'}; latest status: " + ", ".join(
        f"{f} {s or 'no data'}" for f, s in latest.items()
    )


def prediction_summary(prediction: dict) -> str:
    if not prediction["labels"]:
        return "No reference predictions yet."
    if not prediction["live_rows"]:
        return "Reference distribution shown; no live predictions sampled in the last hour."
    return f"{prediction['live_rows']} live predictions sampled in the last hour vs the reference."


def quality_summary(rows: list[dict[str, Any]]) -> str:
    """One sentence on live quality per version (from labels)."""
    labelled = [r for r in rows if r["labelled"]]
    if not labelled:
        return "No labels have arrived for this window's predictions yet."
    parts = []
    for row in labelled:
        name = "accuracy" if row["task"] == "classification" else "mean absolute error"
        parts.append(
            f"v{row['version']}: {name} {row['headline']} ({row['interval']}) over "
            f"{row['labelled']:,} labelled predictions ({row['coverage']} of them)"
        )
    return "; ".join(parts) + "."


def confusion_summary(quality: dict[str, Any] | None) -> str:
    """What the confusion matrix counts."""
    if not quality or not quality.get("labelled") or quality.get("task") != "classification":
        return "Appears once a classifier's predictions in this window have labels."
    return (
        f"v{quality['version']}: {quality['labelled']:,} labelled predictions; rows are the "
        "true class, columns the predicted one."
    )
