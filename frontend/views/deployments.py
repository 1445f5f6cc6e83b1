"""Deployment pages: list, detail with live rollout log and slots, dashboard, rollback, rollout.

Views are adapters like the API's: read through selectors, write through the same services
(``rollout_start``, ``deployment_rollback``), check the same capabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.permissions import user_has_capability
from core.choices import Capability
from core.errors import DomainError, InvalidInput, NotFound
from deployments import selectors, services
from deployments.choices import ACTIVE_ROLLOUT_STATES, RolloutStrategy, SlotState
from deployments.models import Deployment
from frontend import charts
from frontend import dashboard_captions as captions
from frontend.dashboard_captions import figure_text
from frontend.views.access import PageRequest, capability_require
from frontend.views.canary_panel import canary_context
from monitoring import selectors as data
from registry.models import ModelVersion

ROLLOUT_STEPS = [
    "pending",
    "building",
    "starting",
    "verifying",
    "canary",
    "switching",
    "baking",
    "live",
]


def _can_deploy(request: PageRequest) -> bool:
    return user_has_capability(request.user, Capability.DEPLOY)


def _require(request: PageRequest, capability: str) -> None:
    capability_require(request, capability, what="action")


def _deployment(name: str) -> Deployment:
    try:
        return selectors.deployment_get(name=name)
    except NotFound as exc:
        raise Http404(exc.message) from exc


def _live_slot(deployment: Deployment):
    return next((s for s in deployment.slots.all() if s.color == deployment.live_slot), None)


def _health(deployment: Deployment) -> tuple[str, str]:
    """(level, words) from the live slot's state: what a person scanning the list needs."""
    slot = _live_slot(deployment)
    if slot is None or slot.version is None:
        return "idle", "not serving yet"
    if slot.state == SlotState.READY and slot.url:
        return "ok", "healthy"
    if slot.state == SlotState.STARTING:
        return "warn", "live slot starting"
    return "bad", f"live slot {slot.state}"


def rollback_target(deployment: Deployment) -> tuple[ModelVersion | None, ModelVersion | None]:
    """(live version, version a rollback would go back to), by the rule deployment_rollback
    uses (selectors.rollback_target_version). The service decides again under its lock; the
    confirmation form carries what was shown."""
    return selectors.deployment_rollback_target(deployment=deployment)


def _rollback_is_warm(deployment: Deployment, target: ModelVersion | None) -> bool:
    """Whether a rollback to ``target`` would be an instant switch: the idle slot still runs
    it. The very check deployment_rollback makes (services.slot_is_warm): one rule, one
    place."""
    if target is None:
        return False
    idle = next((s for s in deployment.slots.all() if s.color != deployment.live_slot), None)
    return idle is not None and services.slot_is_warm(idle, target)


# --- list -----------------------------------------------------------------------------------


@login_required
@require_GET
def deployment_list(request: PageRequest) -> HttpResponse:
    _require(request, Capability.VIEW)
    deployments = list(selectors.deployment_list_with_last_rollout())
    error_rates = data.error_rate_last_hour([d.pk for d in deployments])
    rows = []
    for deployment in deployments:
        live = _live_slot(deployment)
        level, words = _health(deployment)
        rows.append(
            {
                "deployment": deployment,
                "live_version": live.version if live else None,
                "health_level": level,
                "health": words,
                "error_rate": figure_text(error_rates.get(deployment.pk), ".2%"),
            }
        )
    return render(
        request,
        "frontend/deployments/list.html",
        {"rows": rows, "can_deploy": _can_deploy(request)},
    )


# --- detail ---------------------------------------------------------------------------------


def _status_context(deployment: Deployment) -> dict[str, Any]:
    current = selectors.deployment_current_rollout(deployment)
    recent = list(selectors.rollout_list(deployment=deployment)[:5])
    shown = current or (recent[0] if recent else None)
    active = current is not None and current.state in ACTIVE_ROLLOUT_STATES
    step_index = ROLLOUT_STEPS.index(shown.state) if shown and shown.state in ROLLOUT_STEPS else 0
    level, words = _health(deployment)
    live = _live_slot(deployment)
    return {
        "deployment": deployment,
        "live_version": live.version if live else None,
        "canary": canary_context(shown, live.version if live else None),
        "health_level": level,
        "health": words,
        "slots": list(deployment.slots.all()),
        "rollout": shown,
        "current_rollout": current,
        "rollout_active": active,
        "rollout_steps": ROLLOUT_STEPS,
        "rollout_step_index": step_index,
        "rollout_progress": round(100 * step_index / (len(ROLLOUT_STEPS) - 1)) if shown else 0,
        "recent_rollouts": recent,
        "events": list(deployment.events.all()[:5]),
        # Poll fast while something moves, slowly otherwise (a guard may roll back).
        "poll_ms": 2000 if active else 15000,
    }


def dashboard_context(deployment: Deployment, window: str) -> dict[str, Any]:
    """Figures and per-version tiles of one window (what the page and its partial show)."""
    buckets = data.rollup_buckets(deployment=deployment, window=window)
    points = data.series(buckets)
    totals = buckets.totals()
    live = _live_slot(deployment)
    live_number = live.version.number if live and live.version else None
    focus = live_number or (max(totals) if totals else None)
    costs = data.cost_by_version(
        deployment=deployment, start=buckets.start, end=buckets.end, totals=totals
    )
    drift = data.drift_heatmap(
        deployment=deployment, start=buckets.start, end=buckets.end, version=focus
    )
    prediction = data.prediction_distribution(deployment=deployment, version=focus, end=buckets.end)
    seconds = (buckets.end - buckets.start).total_seconds()
    currency = settings.MODELYARD_PRICE_CURRENCY
    quality_over_time = data.quality_series(
        deployment=deployment, start=buckets.start, end=buckets.end
    )
    focus_quality = (
        data.quality_compute(
            deployment=deployment, version=focus, start=buckets.start, end=buckets.end
        )
        if focus is not None and quality_over_time["totals"].get(focus, {}).get("labelled")
        else None
    )
    quality_rows = _quality_rows(quality_over_time["totals"], focus_quality)
    cost_of = {c["version"]: c for c in costs}
    tiles = []
    for number in sorted(set(totals) | set(cost_of)):
        cell = totals.get(number)
        cost = cost_of.get(number, {})
        tiles.append(
            {
                "version": number,
                "live": number == live_number,
                "requests": cell.requests if cell else 0,
                "rps": figure_text(cell.requests / seconds if cell else None, ".3g"),
                "p50": figure_text(cell.percentile_ms(0.50) if cell else None, ".1f"),
                "p95": figure_text(cell.percentile_ms(0.95) if cell else None, ".1f"),
                "p99": figure_text(cell.percentile_ms(0.99) if cell else None, ".1f"),
                "error_rate": figure_text(
                    cell.errors / cell.requests if cell and cell.requests else None, ".2%"
                ),
                "cost_per_1000": captions.cost_per_1000(cost),
                "cpu_seconds": figure_text(cost.get("cpu_seconds"), ".1f"),
                "gb_hours": figure_text(cost.get("memory_gb_hours"), ".4f"),
            }
        )
    figures = [
        ("fig-latency", charts.latency_figure(points), captions.latency_summary(tiles)),
        (
            "fig-throughput",
            charts.throughput_figure(points),
            captions.traffic_summary(tiles, window),
        ),
        ("fig-errors", charts.error_rate_figure(points), captions.error_summary(tiles)),
        (
            "fig-cost",
            charts.cost_figure(costs, currency=currency),
            captions.cost_summary(tiles, costs),
        ),
        ("fig-drift", charts.drift_heatmap_figure(**drift), captions.drift_summary(drift)),
        (
            "fig-prediction",
            charts.prediction_distribution_figure(**prediction),
            captions.prediction_summary(prediction),
        ),
        (
            "fig-quality",
            charts.quality_figure(
                times=quality_over_time["times"], series=quality_over_time["series"]
            ),
            captions.quality_summary(quality_rows),
        ),
        (
            "fig-confusion",
            charts.confusion_matrix_figure(
                classes=(focus_quality or {}).get("classes") or [],
                matrix=((focus_quality or {}).get("metrics") or {}).get("confusion_matrix"),
                version=focus,
            ),
            captions.confusion_summary(focus_quality),
        ),
    ]
    return {
        "deployment": deployment,
        "window": window,
        "windows": list(data.WINDOWS),
        "window_start": buckets.start,
        "window_end": buckets.end,
        "tiles": tiles,
        "figures": [
            {"id": fid, "figure": fig, "title": fig["layout"]["title"]["text"], "summary": text}
            for fid, fig, text in figures
        ],
        "has_traffic": any(t["requests"] for t in tiles),
        "quality_rows": quality_rows,
        "data_quality": _data_quality(deployment, focus),
        "currency": currency,
    }


def _quality_rows(
    totals: dict[int, dict[str, Any]], focus: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """What the quality table shows per version; F1/AUC or RMSE/R2 for the focus version
    (computed in full once, for its confusion matrix too)."""
    rows = []
    for number, total in sorted(totals.items(), reverse=True):
        low, high = total["ci95"] or (None, None)
        accuracy = total["metric"] == "accuracy"
        row = {
            "version": number,
            "task": "classification" if accuracy else "regression",
            "labelled": total["labelled"],
            "coverage": figure_text(
                total["labelled"] / total["predictions"] if total["predictions"] else None, ".1%"
            ),
            "headline": figure_text(total["value"], ".1%" if accuracy else ".4g"),
            "interval": f"{figure_text(low, '.1%')} to {figure_text(high, '.1%')}"
            if total["ci95"]
            else "—",
            "second": "—",
            "third": "—",
        }
        if focus is not None and focus.get("version") == number and focus.get("metrics"):
            metrics = focus["metrics"]
            if accuracy:
                row["second"] = figure_text(metrics.get("f1_macro"), ".3f")
                row["third"] = figure_text(metrics.get("roc_auc"), ".3f")
            else:
                mae_low, mae_high = (metrics.get("mae") or {}).get("ci95") or (None, None)
                row["interval"] = f"{figure_text(mae_low, '.4g')} to {figure_text(mae_high, '.4g')}"
                row["second"] = figure_text(metrics.get("rmse"), ".4g")
                row["third"] = figure_text(metrics.get("r2"), ".3f")
        rows.append(row)
    return rows


def _data_quality(deployment: Deployment, version: int | None) -> dict[str, Any] | None:
    """The latest drift window's data-quality checks of the version, per feature."""
    if version is None:
        return None
    window = data.drift_latest_window(deployment=deployment, version=version)
    if window is None or window.data_quality is None:
        return None
    features = [
        {
            "name": f.feature,
            "missing": figure_text(f.missing_rate, ".1%"),
            "wrong_type": figure_text(f.type_mismatch_rate, ".1%"),
            "out_of_range": figure_text(f.out_of_range_rate, ".1%"),
            "new_category": figure_text(f.new_category_rate, ".1%"),
            "issues": f.quality_issues,
        }
        for f in window.features.all()
    ]
    return {"window": window, **window.data_quality, "features": features}


def _window_page(
    request: PageRequest,
    name: str,
    template: str,
    context: Callable[[Deployment, str], dict[str, Any]],
) -> HttpResponse:
    """A deployment's page over the ``?window=`` asked for; 400 naming the known windows."""
    _require(request, Capability.VIEW)
    deployment = _deployment(name)
    window = request.GET.get("window", data.DASHBOARD_DEFAULT_WINDOW)
    try:
        data.window_check(window)
    except InvalidInput as exc:
        return HttpResponse(exc.message, status=400, content_type="text/plain")
    return render(request, template, context(deployment, window))


def _deployable_versions(deployment: Deployment, live_version: ModelVersion | None):
    versions = selectors.version_deployable_list(deployment=deployment)
    if live_version is not None:
        versions = versions.exclude(pk=live_version.pk)
    return list(versions.only("id", "number", "state", "description"))


def _detail_context(request: PageRequest, deployment: Deployment, window: str) -> dict[str, Any]:
    # Actions, keys and the try box live in deployment_manage (which imports this module).
    from frontend.views.deployment_manage import manage_context

    status = _status_context(deployment)
    return {
        **status,
        **dashboard_context(deployment, window),
        **manage_context(request, deployment, status["current_rollout"]),
    }


@login_required
@require_GET
def deployment_detail(request: PageRequest, name: str) -> HttpResponse:
    return _window_page(
        request,
        name,
        "frontend/deployments/detail.html",
        lambda deployment, window: _detail_context(request, deployment, window),
    )


@login_required
@require_GET
def deployment_status(request: PageRequest, name: str) -> HttpResponse:
    """The polled partial: live version, slots, rollout progress and its step log."""
    _require(request, Capability.VIEW)
    deployment = _deployment(name)
    context = {**_status_context(deployment), "can_deploy": _can_deploy(request)}
    return render(request, "frontend/deployments/_status.html", context)


@login_required
@require_GET
def deployment_dashboard(request: PageRequest, name: str) -> HttpResponse:
    """The chart data endpoint the dashboard polls: tiles and figures of one window."""
    return _window_page(request, name, "frontend/deployments/_dashboard.html", dashboard_context)


# --- rollback and rollout -------------------------------------------------------------------


def _error_page(
    request: PageRequest, deployment: Deployment, error: DomainError | str, status: int
) -> HttpResponse:
    message = error.message if isinstance(error, DomainError) else error
    context = _detail_context(request, deployment, data.DASHBOARD_DEFAULT_WINDOW)
    context["action_error"] = message
    return render(request, "frontend/deployments/detail.html", context, status=status)


@login_required
@require_GET
def deployment_rollback_confirm(request: PageRequest, name: str) -> HttpResponse:
    """The confirmation step: names the live version and the one traffic goes back to."""
    _require(request, Capability.DEPLOY)
    deployment = _deployment(name)
    live, target = rollback_target(deployment)
    context = {
        "deployment": deployment,
        "live_version": live,
        "rollback_to": target,
        "rollback_warm": _rollback_is_warm(deployment, target),
    }
    template = (
        "frontend/deployments/_rollback_confirm.html"
        if request.htmx
        else "frontend/deployments/rollback_confirm.html"
    )
    return render(request, template, context)


@login_required
@require_POST
def deployment_rollback(request: PageRequest, name: str) -> HttpResponse:
    _require(request, Capability.DEPLOY)
    deployment = _deployment(name)
    reason = request.POST.get("reason", "").strip()[:1000]
    confirmed = request.POST.get("confirm_version", "")
    _, target = rollback_target(deployment)
    # The person confirmed one version: if another rollout changed what a rollback would do
    # since the confirmation was shown, ask again instead of doing something else.
    if target is None or str(target.number) != confirmed:
        shown = f"v{confirmed}" if confirmed else "no version"
        now = f"v{target.number}" if target else "nothing"
        return _error_page(
            request,
            deployment,
            f"The rollback you confirmed (to {shown}) no longer matches the deployment: "
            f"it would now go back to {now}. Nothing was changed; review and confirm again.",
            409,
        )
    try:
        rollout = services.deployment_rollback(
            deployment=deployment, actor=request.user, reason=reason or "rolled back from the UI"
        )
    except DomainError as exc:
        return _error_page(request, deployment, exc, exc.status)
    messages.success(
        request,
        f"Rolling {deployment.name} back to v{rollout.version.number} ({rollout.state}).",
    )
    return redirect(reverse("frontend:deployment_detail", args=[deployment.name]))


@login_required
@require_POST
def deployment_rollout(request: PageRequest, name: str) -> HttpResponse:
    _require(request, Capability.DEPLOY)
    deployment = _deployment(name)
    raw = request.POST.get("version", "").strip()
    if not raw.isdigit():
        return _error_page(request, deployment, "Pick the version to roll out.", 400)
    strategy = request.POST.get("strategy", RolloutStrategy.BLUE_GREEN)
    plan = None
    if strategy in (RolloutStrategy.CANARY, RolloutStrategy.SHADOW):
        # A shadow takes the canary's steps too: they apply once it is promoted to a canary.
        texts = [t.strip() for t in request.POST.get("steps", "").split(",") if t.strip()]
        seconds = request.POST.get("min_step_seconds", "").strip()
        if not all(t.isdigit() for t in texts) or (seconds and not seconds.isdigit()):
            return _error_page(
                request,
                deployment,
                "Canary steps are whole percentages separated by commas (e.g. 5, 25, 50) and "
                "the minimum time per step is a whole number of seconds.",
                400,
            )
        plan = {
            **({"steps": [int(t) for t in texts]} if texts else {}),
            **({"min_step_seconds": int(seconds)} if seconds else {}),
        }
    try:
        rollout = services.rollout_start(
            deployment=deployment,
            version_number=int(raw),
            actor=request.user,
            reason=request.POST.get("reason", "").strip()[:1000],
            strategy=strategy,
            plan=plan,
        )
    except DomainError as exc:
        return _error_page(request, deployment, exc, exc.status)
    how = {"canary": " as a canary", "shadow": " as a shadow"}.get(rollout.strategy, "")
    messages.success(
        request,
        f"Rolling out v{rollout.version.number} into the {rollout.target_slot} slot{how}.",
    )
    return redirect(reverse("frontend:deployment_detail", args=[deployment.name]))


@login_required
@require_POST
def deployment_canary(request: PageRequest, name: str, rollout_id: int) -> HttpResponse:
    """Promote, pause, resume or abort the running canary, or promote a shadow to a canary
    (the same service as the API)."""
    _require(request, Capability.DEPLOY)
    deployment = _deployment(name)
    action = request.POST.get("action", "")
    try:
        rollout = services.canary_act(
            deployment=deployment,
            rollout_id=rollout_id,
            action=action,
            actor=request.user,
            reason=request.POST.get("reason", "").strip()[:500] or f"{action} from the UI",
        )
    except DomainError as exc:
        return _error_page(request, deployment, exc, exc.status)
    messages.success(request, f"Canary of v{rollout.version.number}: {action} ({rollout.state}).")
    return redirect(reverse("frontend:deployment_detail", args=[deployment.name]))
