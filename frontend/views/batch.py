"""Batch job pages: list, create (version or alias + uploaded input), detail, cancel, output.

Writes go through ``batch.services`` like the API's; the output is streamed by this view
after the same checks, never linked as a storage path.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import user_has_capability
from batch import selectors, services
from batch.choices import ACTIVE_JOB_STATES, CANCELLABLE_JOB_STATES, JobState
from batch.models import BatchJob
from core.choices import Capability
from core.errors import DomainError, NotFound
from frontend.forms import form_field
from frontend.views.access import PageRequest, capability_require
from registry import selectors as registry_selectors

# Which form field an input error belongs to, by the service's error code.
_FILE_ERRORS = {"empty_input", "bad_input", "wrong_column_count", "input_required", "too_large"}
_ID_ERRORS = {"invalid_id_column"}
_TARGET_ERRORS = {"version_not_approved", "version_or_alias", "not_found"}


def _require(request: PageRequest, capability: str) -> None:
    capability_require(request, capability, what="action")


def _targets() -> list[tuple[str, str]]:
    """Approved versions and aliases of every model, as select options."""
    options: list[tuple[str, str]] = []
    for v in registry_selectors.version_list_approved():
        options.append((f"{v.model.name}:v:{v.number}", f"{v.model.name} v{v.number}"))
    for a in registry_selectors.alias_list_approved():
        options.append(
            (
                f"{a.model.name}:a:{a.name}",
                f"{a.model.name} @{a.name} (now v{a.version.number})",
            )
        )
    return options


class BatchJobForm(forms.Form):
    target = forms.ChoiceField(
        label="Model version or alias",
        help_text="An alias is resolved again when the job starts.",
    )
    file = forms.FileField(
        label="Input file (CSV or Parquet)",
        help_text="Columns named like the model's features, plus an optional id column.",
    )
    id_column = forms.CharField(
        label="Id column (optional)",
        required=False,
        max_length=200,
        help_text="Copied to the output so each prediction can be joined back.",
    )
    probabilities = forms.BooleanField(label="Include class probabilities", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        targets = _targets()
        form_field(self, "target", forms.ChoiceField).choices = [
            ("", "Choose a version or alias"),
            *targets,
        ]
        self.has_targets = bool(targets)

    def service_kwargs(self) -> dict[str, Any]:
        model_name, kind, value = self.cleaned_data["target"].split(":", 2)
        model = registry_selectors.model_find(name=model_name)
        if model is None:
            raise NotFound(f"No model named {model_name!r}.")
        return {
            "model": model,
            "version_number": int(value) if kind == "v" else None,
            "alias": value if kind == "a" else "",
            "upload": self.cleaned_data["file"],
            "id_column": self.cleaned_data["id_column"].strip(),
            "probabilities": self.cleaned_data["probabilities"],
        }

    def add_service_error(self, error: DomainError) -> None:
        details = error.details if isinstance(error.details, dict) else {}
        if error.code in _TARGET_ERRORS:
            field = "target"
        elif error.code in _ID_ERRORS or (
            error.code == "missing_columns"
            and self.cleaned_data.get("id_column")
            and details.get("missing") == [self.cleaned_data["id_column"].strip()]
        ):
            field = "id_column"
        elif error.code in _FILE_ERRORS or error.code == "missing_columns":
            field = "file"
        else:
            field = None
        self.add_error(field, error.message)


def _job_context(job: BatchJob) -> dict[str, Any]:
    progress = None
    if job.total_rows:
        progress = round(100 * job.rows_done / job.total_rows)
    elif job.state == JobState.SUCCEEDED:
        progress = 100
    return {
        "job": job,
        "progress": progress,
        "active": job.state in ACTIVE_JOB_STATES,
        "cancellable": job.state in CANCELLABLE_JOB_STATES,
        "rows_per_second": job.rows_per_second,
        "eta_seconds": job.eta_seconds,
    }


@login_required
@require_GET
def batch_list(request: PageRequest) -> HttpResponse:
    _require(request, Capability.VIEW)
    jobs = [_job_context(job) for job in selectors.batch_job_list()[:100]]
    context = {
        "jobs": jobs,
        "any_active": any(j["active"] for j in jobs),
        "can_run": user_has_capability(request.user, Capability.RUN_BATCH),
    }
    template = (
        "frontend/batch/_jobs.html"
        if request.htmx and request.GET.get("partial")
        else "frontend/batch/list.html"
    )
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "POST"])
def batch_create(request: PageRequest) -> HttpResponse:
    _require(request, Capability.RUN_BATCH)
    form = BatchJobForm(request.POST, request.FILES) if request.method == "POST" else BatchJobForm()
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                job = services.batch_job_create(actor=request.user, **form.service_kwargs())
            except DomainError as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, f"Batch job {job.pk} queued.")
                return redirect(reverse("frontend:batch_detail", args=[job.pk]))
        status = 400
    return render(
        request,
        "frontend/batch/create.html",
        {"form": form, "has_targets": form.has_targets},
        status=status,
    )


def _job(job_id: int) -> BatchJob:
    try:
        return selectors.batch_job_get(job_id=job_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc


@login_required
@require_GET
def batch_detail(request: PageRequest, job_id: int) -> HttpResponse:
    _require(request, Capability.VIEW)
    context = {
        **_job_context(_job(job_id)),
        "can_run": user_has_capability(request.user, Capability.RUN_BATCH),
    }
    template = (
        "frontend/batch/_progress.html"
        if request.htmx and request.GET.get("partial")
        else "frontend/batch/detail.html"
    )
    return render(request, template, context)


@login_required
@require_POST
def batch_cancel(request: PageRequest, job_id: int) -> HttpResponse:
    _require(request, Capability.RUN_BATCH)
    job = _job(job_id)
    try:
        services.batch_job_cancel(
            job=job, actor=request.user, reason=request.POST.get("reason", "").strip()[:1000]
        )
    except DomainError as exc:
        context = {
            **_job_context(_job(job_id)),
            "can_run": True,
            "action_error": exc.message,
        }
        return render(request, "frontend/batch/detail.html", context, status=exc.status)
    messages.success(request, f"Batch job {job.pk} cancelled.")
    return redirect(reverse("frontend:batch_detail", args=[job.pk]))


@login_required
@require_GET
def batch_output(request: PageRequest, job_id: int) -> HttpResponseBase:
    """The output file, after the same checks as the API (signed in, may view, succeeded)."""
    _require(request, Capability.VIEW)
    job = _job(job_id)
    if job.state != JobState.SUCCEEDED or not job.output_path:
        return HttpResponse(
            f"Batch job {job.pk} is {job.state}; its output exists once it has succeeded.",
            status=409,
            content_type="text/plain",
        )
    return FileResponse(
        default_storage.open(job.output_path, "rb"),
        as_attachment=True,
        filename=f"batch-job-{job.pk}.parquet",
        content_type="application/vnd.apache.parquet",
    )
