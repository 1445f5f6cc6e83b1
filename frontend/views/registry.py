"""Models and versions: list, model page, version page and the version actions."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.choices import Capability as C
from core.errors import DomainError
from deployments.selectors import deployment_list
from frontend.forms import AliasForm, ModelFilterForm, SubmitForm
from frontend.lineage import lineage_figure, lineage_rows
from frontend.views.access import PageRequest, capability_required
from registry import selectors, services
from registry.choices import VersionState
from registry.modelkit.contract import labels_note
from registry.models import ModelVersion, RegisteredModel

MODELS_PER_PAGE = 20
# Validation still running: the version page polls its status partial.
PENDING_STATES = {VersionState.UPLOADED, VersionState.VALIDATING}


def _filtered_models(form: ModelFilterForm) -> QuerySet[RegisteredModel]:
    if not form.is_valid():
        return selectors.model_list()
    data = form.cleaned_data
    return selectors.model_search(
        q=data["q"] or "",
        framework=data["framework"] or "",
        state=data["state"] or "",
        owner=data["owner"] or "",
    )


@capability_required(C.VIEW)
def model_list(request: PageRequest) -> HttpResponse:
    form = ModelFilterForm(request.GET or None)
    models = _filtered_models(form)
    page = Paginator(models, MODELS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "filtered": form.is_valid() and any(form.cleaned_data.values()),
        "any_models": page.paginator.count > 0 or selectors.model_list_by_name().exists(),
    }
    # Live search swaps only the results (htmx), the full page otherwise.
    template = (
        "frontend/registry/_model_results.html"
        if request.htmx and not request.htmx.boosted
        else "frontend/registry/model_list.html"
    )
    return render(request, template, context)


@capability_required(C.VIEW)
def model_detail(request: PageRequest, name: str) -> HttpResponse:
    model = selectors.model_get(name=name)
    versions = list(selectors.version_list(model=model).order_by("-number"))
    lineage_version = versions[0] if versions else None
    requested = request.GET.get("lineage")
    if requested and requested.isdigit():
        lineage_version = next((v for v in versions if v.number == int(requested)), lineage_version)
    lineage = None
    if lineage_version is not None:
        graph = selectors.version_lineage(
            version=selectors.version_get(model=model, number=lineage_version.number)
        )
        lineage = {
            "version": lineage_version,
            "graph": graph,
            "figure": lineage_figure(graph),
            "rows": lineage_rows(graph),
        }
    return render(
        request,
        "frontend/registry/model_detail.html",
        {
            "model": model,
            "versions": versions,
            "states": selectors.model_version_states(model=model),
            "lineage": lineage,
            "deployments": list(deployment_list().filter(model=model)),
        },
    )


def _version_context(request: PageRequest, version: ModelVersion) -> dict:
    report = version.validation_report or {}
    scan = report.get("scan") or report.get("upload_scan") or {}
    return {
        "model": version.model,
        "version": version,
        "report": report,
        "scan": scan,
        "pending": version.state in PENDING_STATES,
        "submit_form": SubmitForm(),
        "alias_form": AliasForm(),
        "own_version": version.created_by_id == request.user.pk,
        "labels_note": labels_note(version.contract),
        "baseline": _baseline_figures(version.baseline_quality),
    }


# The figures of a baseline the page shows, in order: (metrics key, label, has an interval).
_BASELINE_FIGURES = {
    "classification": [
        ("accuracy", "Accuracy", True),
        ("f1_macro", "F1 (macro)", False),
        ("roc_auc", "ROC AUC", False),
        ("log_loss", "Log loss", False),
    ],
    "regression": [
        ("mae", "Mean absolute error", True),
        ("rmse", "RMSE", False),
        ("r2", "R²", False),
    ],
}


def _baseline_figures(baseline: dict[str, Any]) -> dict[str, Any] | None:
    """The version's quality on its labelled reference rows as the page lists it; None
    without one (``ModelVersion.baseline_quality`` is {} without a label column)."""
    found = baseline.get("metrics")
    if not isinstance(found, dict):
        return None
    rows = []
    for key, label, with_interval in _BASELINE_FIGURES.get(baseline.get("task", ""), []):
        figure = found.get(key)
        value, interval = (
            (figure.get("value"), figure.get("ci95"))
            if with_interval and isinstance(figure, dict)
            else (figure, None)
        )
        if value is not None:
            rows.append({"label": label, "value": value, "ci95": interval})
    return {
        "label_column": baseline.get("label_column"),
        "labelled": baseline.get("labelled"),
        "rows": rows,
    }


@capability_required(C.VIEW)
def version_detail(request: PageRequest, name: str, number: int) -> HttpResponse:
    model = selectors.model_get(name=name, summary=False)
    version = selectors.version_get(model=model, number=number)
    return render(
        request, "frontend/registry/version_detail.html", _version_context(request, version)
    )


@capability_required(C.VIEW)
def version_status(request: PageRequest, name: str, number: int) -> HttpResponse:
    """The validation panel alone; it keeps polling itself until validation has finished."""
    model = selectors.model_get(name=name, summary=False)
    version = selectors.version_get(model=model, number=number)
    return render(request, "frontend/registry/_status.html", _version_context(request, version))


@require_POST
@capability_required(C.SUBMIT)
def version_submit(request: PageRequest, name: str, number: int) -> HttpResponse:
    model = selectors.model_get(name=name, summary=False)
    version = selectors.version_get(model=model, number=number)
    form = SubmitForm(request.POST)
    if form.is_valid():
        try:
            services.version_submit_for_review(
                version=version, actor=request.user, comment=form.cleaned_data["comment"]
            )
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"{version} is waiting for a reviewer.")
    return redirect("frontend:version_detail", name=model.name, number=version.number)


@require_POST
@capability_required(C.SET_ALIAS)
def version_alias(request: PageRequest, name: str, number: int) -> HttpResponse:
    model = selectors.model_get(name=name, summary=False)
    version = selectors.version_get(model=model, number=number)
    form = AliasForm(request.POST)
    if form.is_valid():
        try:
            alias = services.alias_set(
                model=model,
                name=form.cleaned_data["alias"],
                version_number=version.number,
                actor=request.user,
                reason=form.cleaned_data["reason"],
            )
        except DomainError as exc:
            form.add_error("alias", exc.message)
        else:
            messages.success(request, f"{model.name}@{alias.name} now points at v{version.number}.")
            return redirect("frontend:version_detail", name=model.name, number=version.number)
    context = _version_context(request, version) | {"alias_form": form}
    return render(request, "frontend/registry/version_detail.html", context, status=400)
