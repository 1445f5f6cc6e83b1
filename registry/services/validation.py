"""Validation of an uploaded version: scan again, load in the sandbox, smoke-predict."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from registry.choices import VersionState
from registry.modelkit.loading import loader_decision
from registry.models import ModelVersion
from registry.services.artifacts import artifact_local_path, file_sha256
from registry.services.baseline import reference_baseline
from registry.services.transitions import version_transition
from registry.validation.reference import contract_schema
from registry.validation.sandbox import SandboxLimits, sandbox_load_and_predict
from registry.validation.scanning import scan_artifact

logger = logging.getLogger(__name__)


def version_validation_claim(*, version_id: int) -> bool:
    """Claim a version for validation with one conditional UPDATE.

    Claims an uploaded version, or one whose validation was claimed so long ago that its
    worker must have died. A second delivery of the same task finds nothing to claim.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.MODELYARD_VALIDATION_STALE_SECONDS)
    with transaction.atomic():
        version = (
            ModelVersion.objects.select_for_update()
            .select_related("model")
            .filter(pk=version_id)
            .filter(
                Q(state=VersionState.UPLOADED)
                | Q(state=VersionState.VALIDATING, validation_started_at__lt=stale)
            )
            .first()
        )
        if version is None:
            return False
        version.validation_started_at = now
        if version.state == VersionState.UPLOADED:
            version_transition(
                version=version,
                to=VersionState.VALIDATING,
                actor=None,
                reason="validation started",
                extra_fields=("validation_started_at",),
            )
        else:
            version.save(update_fields=["validation_started_at"])
    return True


def _run_checks(version: ModelVersion) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    report: dict[str, Any] = dict(version.validation_report)
    baseline: dict[str, Any] = {}
    declared = (version.signature or {}).get("declared") or {}
    with artifact_local_path(version.artifact_path) as path:
        # The file must be the one that was uploaded (artifacts are immutable).
        digest = file_sha256(path)
        report["artifact_sha256_verified"] = digest == version.artifact_sha256
        if digest != version.artifact_sha256:
            report["error"] = "Stored artifact does not match its recorded sha256."
            return False, report, baseline
        scan = scan_artifact(path, version.artifact_format)
        report["scan"] = scan.to_dict()
        if not scan.safe:
            report["error"] = "The safety scan refused the artifact."
            return False, report, baseline
        # Decided once, here: every process that loads this version reads it this way.
        report["loader"] = loader_decision(version.artifact_format, scan.skops_trusted)
        limits = SandboxLimits(
            timeout_seconds=settings.MODELYARD_SANDBOX_TIMEOUT_SECONDS,
            memory_bytes=settings.MODELYARD_SANDBOX_MEMORY_BYTES,
        )
        reference_cm = (
            artifact_local_path(version.reference_path)
            if version.reference_path
            else contextlib.nullcontext(None)
        )
        with reference_cm as reference_path:
            load = sandbox_load_and_predict(
                artifact_path=path,
                fmt=version.artifact_format,
                sample_path=reference_path,
                limits=limits,
                loader=report["loader"],
                declared_feature_names=declared.get("feature_names"),
                class_labels=declared.get("class_labels"),
                label_column=version.reference_label_column or None,
                label_rows=settings.MODELYARD_MAX_REFERENCE_ROWS,
            )
            if load.ok and load.labelled is not None and reference_path is not None:
                baseline = reference_baseline(
                    version=version,
                    reference_path=reference_path,
                    contract=load.contract,
                    labelled=load.labelled,
                )
                report["baseline"] = {
                    key: baseline[key]
                    for key in ("label_column", "labelled_rows", "unusable", "labelled", "error")
                    if key in baseline
                }
    load.labelled = None  # the answers of every labelled row: the baseline keeps their metrics
    report["load"] = load.to_dict()
    report["limits"] = {
        "timeout_seconds": limits.timeout_seconds,
        "memory_bytes": limits.memory_bytes,
    }
    if not load.ok:
        report["error"] = load.error
    return load.ok, report, baseline if "metrics" in baseline else {}


def _declared_part(version: ModelVersion) -> dict[str, Any]:
    declared = (version.signature or {}).get("declared")
    return {"declared": declared} if declared else {}


def version_validate(*, version_id: int) -> ModelVersion | None:
    """Validate a version once: uploaded → validating → validated | invalid.

    Safe to run twice: only the run that claims the version does the work. The model is
    loaded only in the sandbox child process, never in this process.
    """
    if not version_validation_claim(version_id=version_id):
        logger.info("version %s: nothing to validate (already claimed or done)", version_id)
        return None
    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    baseline: dict[str, Any] = {}
    try:
        ok, report, baseline = _run_checks(version)
    except Exception as exc:  # an unexpected failure still ends the validation cleanly
        logger.exception("version %s: validation crashed", version_id)
        ok, report = (
            False,
            {
                **version.validation_report,
                "error": f"Validation failed unexpectedly: {exc.__class__.__name__}: {exc}",
            },
        )
    with transaction.atomic():
        version = (
            ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
        )
        if version.state != VersionState.VALIDATING:  # archived meanwhile
            return version
        version.validation_report = report
        version.validated_at = timezone.now()
        fields = ["validation_report", "validated_at"]
        if ok:
            load = report["load"]
            version.signature = {
                "inputs": load["input_schema"],
                "n_features": load["n_features"],
                "feature_names": load["feature_names"],
                "output": {"shape": load["output_shape"], "dtype": load["output_dtype"]},
                **_declared_part(version),
            }
            version.loader = report["loader"]
            # The contract every model process applies (registry/modelkit/contract.py).
            version.contract = load.get("contract") or {}
            version.baseline_quality = baseline
            fields += ["signature", "loader", "contract", "baseline_quality"]
            if version.contract and version.reference_schema:
                # The upload described the reference by pandas' reading (zip codes as
                # int64); from now on the model's features are typed by the contract.
                typed = {c["name"]: c for c in contract_schema(version.contract)}
                version.reference_schema = [
                    typed.get(column.get("name"), column) for column in version.reference_schema
                ]
                fields.append("reference_schema")
        version_transition(
            version=version,
            to=VersionState.VALIDATED if ok else VersionState.INVALID,
            actor=None,
            reason="validation passed" if ok else str(report.get("error", ""))[:500],
            extra_fields=tuple(fields),
        )
    return version
