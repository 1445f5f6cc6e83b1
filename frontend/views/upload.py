"""The upload wizard: one form, the same upload service as the API, then the version page
(which shows validation progress live)."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.permissions import user_has_capability
from core.choices import Capability as C
from core.errors import DomainError, PayloadTooLarge, UnsafeArtifact
from frontend.forms import AUTO_FRAMEWORK, UploadForm
from frontend.views.access import capability_required
from registry import services
from registry.choices import Framework
from registry.models import RegisteredModel
from registry.services.artifacts import uploaded_file_on_disk
from registry.validation.formats import guess_framework

# Which form field a service error is about, by its error code.
_ERROR_FIELDS = {
    "unknown_framework": "framework",
    "empty_artifact": "file",
    "invalid_filename": "file",
    "invalid_artifact": "file",
    "unsafe_artifact": "file",
    "empty_reference_data": "reference_data",
    "invalid_reference_data": "reference_data",
    "unknown_parent": "parents",
    "name_taken": "model_name",
}


def _error_field(exc: DomainError) -> str | None:
    if isinstance(exc, PayloadTooLarge):
        return "reference_data" if exc.message.startswith("The reference data") else "file"
    if exc.code == "invalid_artifact" and "declare framework" in exc.message:
        return "framework"  # the file is fine, the declared framework is not
    if isinstance(exc, UnsafeArtifact):
        return "file"
    if exc.code == "invalid" and exc.message.split(":", 1)[0] in ("name", "description"):
        return "model_name"  # model_create's field validation of a new model's name
    return _ERROR_FIELDS.get(exc.code)


def _model_names():
    return RegisteredModel.objects.order_by("name").values_list("name", flat=True)


def _guess(upload: UploadedFile) -> str | None:
    with uploaded_file_on_disk(upload) as path:
        guessed = guess_framework(path)
    upload.seek(0)
    return guessed


class _UploadRefused(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _upload(request: HttpRequest, form: UploadForm):
    data = form.cleaned_data
    framework = data["framework"]
    if framework == AUTO_FRAMEWORK:
        framework = _guess(data["file"])
        if framework is None:
            raise _UploadRefused(
                "framework",
                "Could not tell the framework from this file; choose it from the list.",
            )
    # A new model and its first version are one unit: a refused upload leaves no model.
    with transaction.atomic():
        model = RegisteredModel.objects.filter(name__iexact=data["model_name"]).first()
        if model is None:
            if not user_has_capability(request.user, C.MANAGE_MODELS):
                raise _UploadRefused(
                    "model_name",
                    f"There is no model named {data['model_name']!r}, and your role cannot "
                    "register one.",
                )
            model = services.model_create(name=data["model_name"], owner=request.user)
        return services.version_upload(
            model=model,
            uploader=request.user,
            artifact=data["file"],
            framework=framework,
            metadata=form.metadata,
            reference=data.get("reference_data"),
        )


def _body_too_large(request: HttpRequest) -> str | None:
    """Refuse an oversized body before reading a byte of it (as the API's parser does)."""
    limit = settings.MODELYARD_MAX_ARTIFACT_BYTES + settings.MODELYARD_MAX_REFERENCE_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit + 1024 * 1024:
        return (
            f"The upload is {length:,} bytes; model files are limited to "
            f"{settings.MODELYARD_MAX_ARTIFACT_BYTES:,} bytes and reference data to "
            f"{settings.MODELYARD_MAX_REFERENCE_BYTES:,} bytes."
        )
    return None


@capability_required(C.UPLOAD)
def upload(request: HttpRequest) -> HttpResponse:
    initial = {"model_name": request.GET.get("model", "")}
    too_large = _body_too_large(request) if request.method == "POST" else None
    if too_large:
        return render(
            request,
            "frontend/registry/upload.html",
            {
                "form": UploadForm(initial=initial),
                "body_error": too_large,
                "model_names": _model_names(),
            },
            status=413,
        )
    form = UploadForm(request.POST or None, request.FILES or None, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                version = _upload(request, form)
            except _UploadRefused as exc:
                form.add_error(exc.field, exc.message)
            except DomainError as exc:
                form.add_error(_error_field(exc), exc.message)
            else:
                return redirect(
                    "frontend:version_detail", name=version.model.name, number=version.number
                )
        status = 400
    return render(
        request,
        "frontend/registry/upload.html",
        {
            "form": form,
            "model_names": _model_names(),
        },
        status=status,
    )


@capability_required(C.UPLOAD)
def upload_guess(request: HttpRequest) -> HttpResponse:
    """htmx: which framework the chosen file looks like (read, never loaded)."""
    upload = request.FILES.get("file")
    guessed = _guess(upload) if upload is not None and upload.size else None
    label = dict(Framework.choices).get(guessed) if guessed else None
    return render(
        request,
        "frontend/registry/_framework_hint.html",
        {"guessed": guessed, "label": label, "has_file": upload is not None},
    )
