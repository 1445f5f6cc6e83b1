"""The deployment page's canary or shadow panel: arms and weights, step progress, the judge's
latest verdict per metric, a shadow's comparison per minute (table and chart), and the buttons
of each (the page's status partial renders it; frontend.views.deployments holds the page)."""

from __future__ import annotations

from typing import Any

from deployments import selectors
from deployments.choices import RolloutState, RolloutStrategy
from deployments.models import Rollout
from deployments.services.progressive import canary_weight
from frontend import charts
from frontend.dashboard_captions import figure_text
from registry.models import ModelVersion


def canary_context(rollout: Rollout | None, live_version: ModelVersion | None) -> dict | None:
    """The canary or shadow panel: arms and weights, step progress, the judge's latest verdict
    (a canary) or the comparison per minute (a shadow), and the buttons of each."""
    if rollout is None or rollout.strategy not in (
        RolloutStrategy.CANARY,
        RolloutStrategy.SHADOW,
    ):
        return None
    running = rollout.state in (RolloutState.CANARY, RolloutState.SHADOW)
    shadowing = rollout.state == RolloutState.SHADOW
    steps = rollout.plan.get("steps") or []
    weight = canary_weight(rollout) // 100 if rollout.state == RolloutState.CANARY else 0
    judgement = rollout.judgement or {}
    promoted = rollout.state in (RolloutState.SWITCHING, RolloutState.BAKING, RolloutState.LIVE)
    closing = _closing_verdicts(rollout)
    if shadowing:
        buttons = [
            ("canary", f"Promote to canary ({steps[0] if steps else 5} %)", False),
            ("promote", "Promote to 100 %", False),
            ("abort", "Abort shadow", True),
        ]
    else:
        buttons = [
            ("promote", "Promote to 100 %", False),
            ("resume", "Resume", False) if rollout.paused else ("pause", "Pause", False),
            ("abort", "Abort canary", True),
        ]
    return {
        "kind": "shadow" if shadowing else "canary",
        "running": running,
        "shadowing": shadowing,
        "weight": weight,
        "live_weight": 100 - weight,
        "mirror_percent": rollout.plan.get("mirror_percent", 100),
        "baseline": rollout.previous_version or live_version,
        "steps": [
            {
                "percent": percent,
                "status": "done"
                if promoted or (i < rollout.canary_step and not shadowing)
                else "current"
                if i == rollout.canary_step and rollout.state == RolloutState.CANARY
                else "waiting",
                "closed_by": closing.get(i, []),
            }
            for i, percent in enumerate(steps)
        ],
        "step_number": rollout.canary_step + 1,
        "paused": rollout.paused,
        # (action, label, dangerous): the buttons of a running canary or shadow, in order.
        "buttons": buttons,
        "verdict": judgement.get("verdict"),
        "judged_at": judgement.get("at"),
        "metrics": [
            {
                **metric,
                "p_text": figure_text(metric.get("p_value"), ".2g"),
                "baseline_text": _metric_text(metric["metric"], metric.get("baseline")),
                "canary_text": _metric_text(metric["metric"], metric.get("canary")),
                "requests": (metric.get("counts") or {}).get("canary_requests"),
            }
            for metric in judgement.get("metrics", [])
        ],
        **_shadow_context(rollout),
    }


def _closing_verdicts(rollout: Rollout) -> dict[int, list[dict[str, str]]]:
    """Step index -> the judge's per-metric verdicts that closed it (passed it on, or promoted
    the last one), read from the rollout's step log: the panel's judge table shows only the
    latest verdict, which after a step moves on is already the next step's."""
    closing: dict[int, list[dict[str, str]]] = {}
    for entry in rollout.steps or []:
        judged = entry.get("judgement") if isinstance(entry, dict) else None
        if not isinstance(judged, dict) or judged.get("verdict") != "pass":
            continue
        if not isinstance(judged.get("step"), int):
            continue
        closing[judged["step"]] = [
            {
                "metric": str(metric.get("metric")),
                "verdict": str(metric.get("verdict")),
                "p_text": figure_text(metric.get("p_value"), ".2g"),
            }
            for metric in judged.get("metrics") or []
            if isinstance(metric, dict)
        ]
    return closing


def _shadow_context(rollout: Rollout) -> dict[str, Any]:
    """A shadow's comparison per minute: the panel's table and its chart (one read)."""
    if rollout.strategy != RolloutStrategy.SHADOW:
        return {"shadow": [], "shadow_figure": None}
    windows = selectors.shadow_windows(rollout)
    return {
        "shadow": _shadow_rows(windows),
        "shadow_figure": charts.shadow_agreement_figure(windows, version=rollout.version.number),
    }


def _shadow_rows(windows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The shadow's comparison per minute, formatted for the panel's table."""
    return [
        {
            "start": f"{window['start']:%H:%M}",
            "mirrored": str(window["mirrored"]),
            "dropped": str(window["dropped"]),
            "agreement": figure_text(window["agreement_rate"], ".2%"),
            "prob_mean": figure_text(window["prob_abs_mean"], ".4f"),
            "prob_max": figure_text(window["prob_abs_max"], ".4f"),
            "latency_diff": figure_text(window["latency_diff_ms_mean"], "+.2f"),
            "errors": str(window["errors"]),
        }
        for window in windows
    ]


def _metric_text(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == "error_rate":
        return format(value, ".2%")
    if metric == "latency":
        return f"{value:.1f} ms"
    return format(value, ".4g")
