from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from accounts.models import User
from core.choices import AuditAction
from core.errors import (
    InvalidInput,
    InvalidState,
    NotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsafeArtifact,
)
from core.filenames import client_filename_check
from core.services import audit_record
from registry.choices import DatasetRole, Framework, VersionState
from registry.models import DatasetReference, ModelVersion, RegisteredModel
from registry.services.artifacts import (
    StoredFile,
    artifact_delete_quietly,
    artifact_store,
    file_sha256,
    uploaded_file_on_disk,
)
from registry.services.transitions import version_transition
from registry.validation.formats import SAFE_FORMATS, ArtifactFormatError, detect_format
from registry.validation.reference import (
    LabelColumnError,
    ReferenceDataError,
    infer_schema,
    load_reference_frame,
    load_reference_labels,
)
from registry.validation.scanning import scan_artifact

# File name inside storage per serialization format: the server decides, never the client.
ARTIFACT_BASENAMES = {
    "pickle": "model.pkl",
    "joblib": "model.joblib",
    "skops": "model.skops",
    "onnx": "model.onnx",
    "xgboost-json": "model.json",
    "xgboost-ubj": "model.ubj",
    "lightgbm-text": "model.txt",
}


@dataclass(frozen=True)
class ParentRef:
    model: str
    version: int


@dataclass(frozen=True)
class DatasetRef:
    uri: str
    content_hash: str = ""
    name: str = ""
    role: str = DatasetRole.TRAINING


@dataclass(frozen=True)
class VersionMetadata:
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    parents: list[ParentRef] = field(default_factory=list)
    datasets: list[DatasetRef] = field(default_factory=list)
    code_repo: str = ""
    code_commit: str = ""
    training_run_id: str = ""
    # Declared signature: the feature names of a model fitted without them (rows keyed by
    # name then work), and the original labels of a booster file that keeps only 0..k-1.
    feature_names: list[str] | None = None
    class_labels: list[Any] | None = None
    # The reference data's column of true labels: kept out of the features, and the source
    # of the version's baseline quality (registry.services.validation).
    label_column: str | None = None


def _check_size(upload: UploadedFile[bytes], *, limit: int, what: str) -> None:
    if upload.size is None or upload.size > limit:
        raise PayloadTooLarge(
            f"The {what} is {upload.size or 0:,} bytes; the limit is {limit:,} bytes.",
            details={"size": upload.size, "limit": limit},
        )
    if upload.size == 0:
        raise InvalidInput(f"The {what} is empty.", code=f"empty_{what.replace(' ', '_')}")


def _resolve_parents(refs: list[ParentRef]) -> list[ModelVersion]:
    parents = []
    for ref in refs:
        parent = (
            ModelVersion.objects.select_related("model")
            .filter(model__name__iexact=ref.model, number=ref.version)
            .first()
        )
        if parent is None:
            raise InvalidInput(
                f"Parent version {ref.model} v{ref.version} does not exist.", code="unknown_parent"
            )
        parents.append(parent)
    return parents


@dataclass(frozen=True)
class PushResult:
    version: ModelVersion
    created: bool


def _same_artifact(model: RegisteredModel, sha256: str) -> ModelVersion | None:
    # An archived version was retired on purpose: pushing its bytes again makes a new one.
    return (
        ModelVersion.objects.filter(model=model, artifact_sha256=sha256)
        .exclude(state=VersionState.ARCHIVED)
        .order_by("number")
        .first()
    )


def version_push(
    *,
    model: RegisteredModel,
    uploader: User,
    artifact: UploadedFile[bytes],
    framework: str,
    metadata: VersionMetadata,
    reference: UploadedFile[bytes] | None = None,
) -> PushResult:
    """Idempotent upload (the API's, for CI): the same artifact bytes pushed again to the same
    model return the version that holds them (any state but archived), unchanged.

    Decided by a lookup on (model, sha256) under the model row lock that also allocates
    version numbers, so two concurrent pushes of one file make one version. Not a unique
    constraint: browser uploads (version_upload) may still hold the same bytes twice, and
    an archived version's bytes may come back as a new version.
    """
    return _upload(
        model=model,
        uploader=uploader,
        artifact=artifact,
        framework=framework,
        metadata=metadata,
        reference=reference,
        reuse=True,
    )


def version_upload(
    *,
    model: RegisteredModel,
    uploader: User,
    artifact: UploadedFile[bytes],
    framework: str,
    metadata: VersionMetadata,
    reference: UploadedFile[bytes] | None = None,
) -> ModelVersion:
    """Store a new version and start its validation."""
    return _upload(
        model=model,
        uploader=uploader,
        artifact=artifact,
        framework=framework,
        metadata=metadata,
        reference=reference,
        reuse=False,
    ).version


def _upload(
    *,
    model: RegisteredModel,
    uploader: User,
    artifact: UploadedFile[bytes],
    framework: str,
    metadata: VersionMetadata,
    reference: UploadedFile[bytes] | None,
    reuse: bool,
) -> PushResult:
    """Store a new version and start its validation.

    Everything that can be checked without loading the model is checked here, before
    anything is written: size, file name, format against the declared framework, a static
    scan of pickle-based files, the reference sample. A rejected upload stores no file and
    no row: files are written first and deleted again if the database transaction fails.
    """
    if framework not in Framework.values:
        raise InvalidInput(
            f"Unknown framework {framework!r}; choose one of {', '.join(Framework.values)}.",
            code="unknown_framework",
        )
    _check_size(artifact, limit=settings.MODELYARD_MAX_ARTIFACT_BYTES, what="artifact")
    original_filename = client_filename_check(artifact.name or "")
    if reference is not None:
        _check_size(reference, limit=settings.MODELYARD_MAX_REFERENCE_BYTES, what="reference data")
        client_filename_check(reference.name or "")
    if metadata.label_column and reference is None:
        raise _label_column_error(
            metadata.label_column, "names a column of the reference data; upload reference data"
        )
    if metadata.label_column and metadata.label_column in (metadata.feature_names or []):
        raise _label_column_error(
            metadata.label_column, "is one of the declared feature_names; labels are no feature"
        )
    parents = _resolve_parents(metadata.parents)

    written: list[str] = []
    try:
        with uploaded_file_on_disk(artifact) as artifact_path:
            if reuse:  # cheap early answer; the locked lookup in _version_create decides
                existing = _same_artifact(model, file_sha256(artifact_path))
                if existing is not None:
                    return PushResult(version=existing, created=False)
            try:
                fmt = detect_format(artifact_path, framework)
            except ArtifactFormatError as exc:
                raise InvalidInput(str(exc), code="invalid_artifact") from exc
            scan = scan_artifact(artifact_path, fmt)
            if not scan.safe:
                raise UnsafeArtifact(
                    "The artifact was refused by the safety scan: "
                    + "; ".join(f"{f.module}.{f.name}: {f.reason}" for f in scan.findings[:5]),
                    details=scan.to_dict(),
                )
            reference_info = (
                _reference_prepare(reference, label_column=metadata.label_column)
                if reference is not None
                else None
            )
            stored = artifact_store(
                local_path=artifact_path,
                folder=f"models/{model.pk}",
                basename=ARTIFACT_BASENAMES[fmt],
            )
            written.append(stored.path)
        if reference is not None and reference_info is not None:
            with uploaded_file_on_disk(reference) as reference_path:
                stored_reference = artifact_store(
                    local_path=reference_path,
                    folder=f"models/{model.pk}/reference",
                    basename="reference" + reference_info["suffix"],
                )
            written.append(stored_reference.path)
        with transaction.atomic():
            result = _version_create(
                reuse=reuse,
                model=model,
                uploader=uploader,
                framework=framework,
                fmt=fmt,
                stored=stored,
                original_filename=original_filename,
                metadata=metadata,
                parents=parents,
                scan=scan.to_dict(),
                reference=(stored_reference, reference_info) if reference_info else None,
            )
        if not result.created:  # lost a race to an identical push: keep no second copy
            artifact_delete_quietly(written)
    except BaseException:
        artifact_delete_quietly(written)
        raise
    return result


def _label_column_error(label_column: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"label_column: {label_column!r} {problem}.",
        code="invalid_label_column",
        details={"field": "label_column", "label_column": label_column},
    )


def _reference_prepare(
    reference: UploadedFile[bytes], *, label_column: str | None
) -> dict[str, Any]:
    max_rows = settings.MODELYARD_MAX_REFERENCE_ROWS
    with uploaded_file_on_disk(reference) as path:
        try:
            # Without the label column: the schema (and so drift) describes features only.
            frame = load_reference_frame(path, max_rows=max_rows, label_column=label_column)
            labels = (
                load_reference_labels(path, max_rows=max_rows, label_column=label_column)
                if label_column
                else None
            )
        except LabelColumnError as exc:
            raise _label_column_error(
                str(label_column), "is not a column of the reference data"
            ) from exc
        except ReferenceDataError as exc:
            raise InvalidInput(f"reference_data: {exc}", code="invalid_reference_data") from exc
        with path.open("rb") as handle:
            suffix = ".parquet" if handle.read(4) == b"PAR1" else ".csv"
    if label_column and len(frame.columns) == 0:
        raise _label_column_error(label_column, "is the reference data's only column")
    if labels is not None and not labels.notna().any():
        raise _label_column_error(label_column or "", "holds no labels (every cell is empty)")
    return {"rows": len(frame), "schema": infer_schema(frame), "suffix": suffix}


def _declared_signature(metadata: VersionMetadata) -> dict[str, Any]:
    declared = {
        key: value
        for key, value in (
            ("feature_names", metadata.feature_names),
            ("class_labels", metadata.class_labels),
        )
        if value
    }
    return {"declared": declared} if declared else {}


def _version_create(
    *,
    reuse: bool,
    model: RegisteredModel,
    uploader: User,
    framework: str,
    fmt: str,
    stored: StoredFile,
    original_filename: str,
    metadata: VersionMetadata,
    parents: list[ModelVersion],
    scan: dict[str, Any],
    reference: tuple[StoredFile, dict[str, Any]] | None,
) -> PushResult:
    # Lock the model row: version numbers are allocated one at a time per model.
    locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    if reuse:
        existing = _same_artifact(locked, stored.sha256)
        if existing is not None:
            return PushResult(version=existing, created=False)
    last = locked.versions.order_by("-number").values_list("number", flat=True).first()
    version = ModelVersion(
        model=locked,
        number=(last or 0) + 1,
        created_by=uploader,
        description=metadata.description,
        framework=framework,
        artifact_format=fmt,
        safe_format=fmt in SAFE_FORMATS,
        artifact_path=stored.path,
        artifact_sha256=stored.sha256,
        artifact_size=stored.size,
        original_filename=original_filename,
        params=metadata.params,
        metrics=metadata.metrics,
        tags=metadata.tags,
        code_repo=metadata.code_repo,
        code_commit=metadata.code_commit,
        training_run_id=metadata.training_run_id,
        validation_report={"upload_scan": scan},
        signature=_declared_signature(metadata),
    )
    if reference is not None:
        stored_reference, info = reference
        version.reference_path = stored_reference.path
        version.reference_sha256 = stored_reference.sha256
        version.reference_rows = info["rows"]
        version.reference_schema = info["schema"]
        version.reference_label_column = metadata.label_column or ""
    version.save()
    version.parents.set(parents)
    DatasetReference.objects.bulk_create(
        DatasetReference(
            version=version, uri=d.uri, content_hash=d.content_hash, name=d.name, role=d.role
        )
        for d in metadata.datasets
    )
    audit_record(
        actor=uploader,
        action=AuditAction.VERSION_UPLOADED,
        obj=version,
        after={
            "state": version.state,
            "framework": framework,
            "format": fmt,
            "sha256": stored.sha256,
            "size": stored.size,
            "parents": [str(p) for p in parents],
            "datasets": [d.uri for d in metadata.datasets],
        },
    )
    # robust: the version is committed by then; a broker outage must not fail the upload
    # (and so delete the committed version's files) — the validation sweep enqueues it later.
    transaction.on_commit(lambda: _enqueue_validation(version.pk), robust=True)
    return PushResult(version=version, created=True)


def _enqueue_validation(version_id: int) -> None:
    from registry.tasks import version_validate_task  # tasks import services, not the reverse

    version_validate_task.delay(version_id)


def _locked_version(version: ModelVersion) -> ModelVersion:
    locked = (
        ModelVersion.objects.select_for_update()
        .select_related("model")
        .filter(pk=version.pk)
        .first()
    )
    if locked is None:
        raise NotFound(f"{version} no longer exists.")
    return locked


@transaction.atomic
def version_submit_for_review(
    *, version: ModelVersion, actor: User, comment: str = ""
) -> ModelVersion:
    """validated → in_review. Only a validated version can be reviewed."""
    version = _locked_version(version)
    if version.state != VersionState.VALIDATED:
        hint = (
            " (validation has not passed)"
            if version.state
            in (VersionState.UPLOADED, VersionState.VALIDATING, VersionState.INVALID)
            else ""
        )
        raise InvalidState(
            f"{version} is {version.state}{hint}; only a validated version "
            "can be submitted for review."
        )
    return version_transition(
        version=version, to=VersionState.IN_REVIEW, actor=actor, reason=comment
    )


@transaction.atomic
def version_archive(*, version: ModelVersion, actor: User, reason: str = "") -> ModelVersion:
    """Any state → archived. An alias still pointing at the version blocks it."""
    version = _locked_version(version)
    aliases = list(version.aliases.values_list("name", flat=True))
    if aliases:
        raise NotAllowed(
            f"{version} is the target of alias(es) {', '.join(aliases)}; move them first.",
            code="alias_in_use",
        )
    return version_transition(version=version, to=VersionState.ARCHIVED, actor=actor, reason=reason)
