"""Review queue and the review page: the evidence side by side, then approve or reject."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render

from core.choices import Capability as C
from core.errors import DomainError
from deployments import selectors as deployment_selectors
from deployments.choices import Environment
from frontend.forms import ReviewForm
from frontend.lineage import lineage_figure, lineage_rows
from frontend.views.access import PageRequest, capability_required
from registry import selectors, services
from registry.models import ModelVersion, RegisteredModel

# Which alias names mean "what runs in production", most specific first.
_LIVE_ALIASES = ("production", "prod", "champion")


def live_version(
    model: RegisteredModel, *, exclude: ModelVersion | None = None
) -> tuple[ModelVersion, str] | None:
    """The version of ``model`` that is live now: what its production alias points at, else
    what a production deployment's live slot serves. Returns (version, how we know) or None."""
    aliases = {a.name.lower(): a for a in model.aliases.select_related("version")}
    for name in _LIVE_ALIASES:
        alias = aliases.get(name)
        if alias is not None and alias.version != exclude:
            return alias.version, f"alias {alias.name}"
    deployments = deployment_selectors.deployment_list_serving(model_id=model.pk)
    # Production first: that is what "live" means to the people reviewing.
    for deployment in sorted(deployments, key=lambda d: d.environment != Environment.PRODUCTION):
        for slot in deployment.slots.all():
            if slot.color == deployment.live_slot and slot.version and slot.version != exclude:
                return slot.version, f"deployment {deployment.name} ({deployment.environment})"
    return None


def metrics_comparison(candidate: dict[str, Any], live: dict[str, Any] | None) -> list[dict]:
    rows = []
    live = live or {}
    for name in sorted(set(candidate) | set(live)):
        new, old = candidate.get(name), live.get(name)
        delta = None
        if isinstance(new, int | float) and isinstance(old, int | float):
            delta = new - old
        rows.append({"name": name, "candidate": new, "live": old, "delta": delta})
    return rows


def params_diff(candidate: dict[str, Any], live: dict[str, Any] | None) -> list[dict]:
    rows = []
    live = live or {}
    for name in sorted(set(candidate) | set(live)):
        new, old = candidate.get(name), live.get(name)
        if name not in live:
            change = "added"
        elif name not in candidate:
            change = "removed"
        else:
            change = "same" if new == old else "changed"
        rows.append({"name": name, "candidate": new, "live": old, "change": change})
    return rows


@capability_required(C.REVIEW)
def review_queue(request: PageRequest) -> HttpResponse:
    versions = list(selectors.review_queue().prefetch_related("reviews"))
    return render(request, "frontend/registry/review_queue.html", {"versions": versions})


@capability_required(C.REVIEW)
def review_detail(request: PageRequest, name: str, number: int) -> HttpResponse:
    model = selectors.model_get(name=name, summary=False)
    version = selectors.version_get(model=model, number=number)
    form = ReviewForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.version_review(
                version=version,
                reviewer=request.user,
                decision=form.cleaned_data["decision"],
                comment=form.cleaned_data["comment"],
            )
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            verb = "Approved" if form.cleaned_data["decision"] == "approve" else "Rejected"
            messages.success(request, f"{verb} {version}.")
            return redirect("frontend:review_queue")
    live = live_version(model, exclude=version)
    live_version_obj, live_source = live if live else (None, "")
    graph = selectors.version_lineage(version=version)
    report = version.validation_report or {}
    own = version.created_by_id == request.user.pk
    already = any(r.reviewer_id == request.user.pk for r in version.reviews.all())
    return render(
        request,
        "frontend/registry/review_detail.html",
        {
            "model": model,
            "version": version,
            "report": report,
            "scan": report.get("scan") or report.get("upload_scan") or {},
            "live": live_version_obj,
            "live_source": live_source,
            "metrics": metrics_comparison(
                version.metrics, live_version_obj.metrics if live_version_obj else None
            ),
            "params": params_diff(
                version.params, live_version_obj.params if live_version_obj else None
            ),
            "lineage": {
                "graph": graph,
                "figure": lineage_figure(graph),
                "rows": lineage_rows(graph),
            },
            "form": form,
            "own_version": own,
            "already_reviewed": already,
            "can_decide": not own and not already and version.state == "in_review",
        },
        status=400 if form.errors else 200,
    )
