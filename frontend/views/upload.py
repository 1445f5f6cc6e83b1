"""The upload wizard: one form, the same upload service as the API, then the version page
(which shows validation progress live)."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import redirect, render

from accounts.permissions import user_has_capability
from core.choices import Capability as C
from core.errors import DomainError, PayloadTooLarge, UnsafeArtifact
from frontend import upload_staging
from frontend.forms import AUTO_FRAMEWORK, UploadForm
from frontend.views.access import PageRequest, capability_required
from registry import selectors, services
from registry.choices import Framework
from registry.models import ModelVersion, RegisteredModel
from registry.services.artifacts import uploaded_file_on_disk
from registry.validation.formats import ArtifactFormatError, detect_format, guess_framework
from registry.validation.reference import ReferenceDataError, load_reference_frame

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
    "invalid_label_column": "label_column",
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


def _model_names() -> QuerySet[RegisteredModel, str]:
    return selectors.model_list_by_name().values_list("name", flat=True)


def _guess(upload: UploadedFile) -> str | None:
    with uploaded_file_on_disk(upload) as path:
        guessed = guess_framework(path)
    upload.seek(0)
    return guessed


class _UploadRefused(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _upload(request: PageRequest, form: UploadForm) -> ModelVersion:
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
        model = selectors.model_find(name=data["model_name"])
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


def _other_errors(request: PageRequest, form: UploadForm) -> list[tuple[str, str]]:
    """After the upload service refused one thing, what else it would refuse, so the page
    reports every problem at once (the service stops at its first). Each check is the
    function the service itself calls; a successful upload never pays for them."""
    data = form.cleaned_data
    errors: list[tuple[str, str]] = []
    # On a form with field errors too: each check runs when the fields it needs are clean.
    name = data.get("model_name")
    exists = name is None or selectors.model_find(name=name) is not None
    if not exists and not user_has_capability(request.user, C.MANAGE_MODELS):
        errors.append(
            (
                "model_name",
                f"There is no model named {data['model_name']!r}, and your role cannot "
                "register one.",
            )
        )
    # The parsed lines, not the metadata: that is built only when every metadata field is clean.
    for ref in data.get("parents") or []:
        if not selectors.version_exists(model_name=ref["model"], number=ref["version"]):
            errors.append(
                ("parents", f"Parent version {ref['model']} v{ref['version']} does not exist.")
            )
    upload = data.get("file")
    framework = data.get("framework")
    if upload is None or framework is None:
        pass
    elif framework == AUTO_FRAMEWORK and (framework := _guess(upload)) is None:
        errors.append(
            ("framework", "Could not tell the framework from this file; choose it from the list.")
        )
    else:
        with uploaded_file_on_disk(upload) as path:
            try:
                detect_format(path, framework)
            except ArtifactFormatError as exc:
                field = "framework" if "declare framework" in str(exc) else "file"
                errors.append((field, str(exc)))
        upload.seek(0)
    reference = data.get("reference_data")
    if reference is not None:
        with uploaded_file_on_disk(reference) as path:
            try:
                load_reference_frame(path, max_rows=settings.MODELYARD_MAX_REFERENCE_ROWS)
            except ReferenceDataError as exc:
                errors.append(("reference_data", f"reference_data: {exc}"))
        reference.seek(0)
    return errors


def _add_errors(form: UploadForm, refused: tuple[str | None, str] | None, others) -> None:
    reported: set[str | None] = set()
    if refused is not None:
        form.add_error(refused[0], refused[1])
        reported.add(refused[0])
    for field, message in others:
        # One message per field: the service's own, when it refused that field.
        if field not in reported and field not in form.errors:
            form.add_error(field, message)
            reported.add(field)


def _files_with_kept(request: PageRequest):
    """The request's files, plus the ones kept from a refused submit that were not chosen
    anew (see frontend/upload_staging.py)."""
    files = request.FILES.copy()
    for field in upload_staging.FIELDS:
        token = request.POST.get(f"kept_{field}", "")
        if field not in files and token:
            restored = upload_staging.restore(token, user_id=request.user.pk)
            if restored is not None:
                files[field] = restored
    return files


def _keep_files(request: PageRequest, form: UploadForm, files) -> dict[str, dict]:
    """Keep each chosen file that has no error of its own for the next submit."""
    kept = {}
    for field in upload_staging.FIELDS:
        upload = files.get(field)
        if upload is not None and upload.size and field not in form.errors:
            kept[field] = upload_staging.stage(upload, user_id=request.user.pk, field=field)
    return kept


def _body_too_large(request: PageRequest) -> str | None:
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
def upload(request: PageRequest) -> HttpResponse:
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
    files = _files_with_kept(request) if request.method == "POST" else None
    form = UploadForm(request.POST or None, files or None, initial=initial)
    status = 200
    kept: dict[str, dict] = {}
    if request.method == "POST":
        if form.is_valid():
            try:
                version = _upload(request, form)
            except _UploadRefused as exc:
                _add_errors(form, (exc.field, exc.message), _other_errors(request, form))
            except DomainError as exc:
                _add_errors(form, (_error_field(exc), exc.message), _other_errors(request, form))
            else:
                upload_staging.discard(user_id=request.user.pk)
                return redirect(
                    "frontend:version_detail", name=version.model.name, number=version.number
                )
        else:
            _add_errors(form, None, _other_errors(request, form))
        status = 400
        kept = _keep_files(request, form, files)
    return render(
        request,
        "frontend/registry/upload.html",
        {
            "form": form,
            "model_names": _model_names(),
            "kept": kept,
        },
        status=status,
    )


@capability_required(C.UPLOAD)
def upload_guess(request: PageRequest) -> HttpResponse:
    """htmx: which framework the chosen file looks like (read, never loaded)."""
    upload = request.FILES.get("file")
    guessed = _guess(upload) if upload is not None and upload.size else None
    label = dict(Framework.choices).get(guessed) if guessed else None
    return render(
        request,
        "frontend/registry/_framework_hint.html",
        {"guessed": guessed, "label": label, "has_file": upload is not None},
    )
