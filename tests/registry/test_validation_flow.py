"""Validation through the registry service: claim, scan, sandboxed load, report, states."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from registry import services
from registry.choices import VersionState
from registry.models import ModelVersion
from registry.services.versions import VersionMetadata
from tests.registry.helpers import upload_version

pytestmark = pytest.mark.django_db


def test_validation_loads_in_sandbox_and_stores_signature(
    registered_model, scientist, sklearn_model
):
    version = upload_version(registered_model, scientist, sklearn_model)
    report = version.validation_report
    assert report["scan"]["safe"] is True and report["artifact_sha256_verified"] is True
    load = report["load"]
    assert load["ok"] is True and load["sample_rows"] > 0
    expected = sklearn_model.model.predict(
        sklearn_model.frame.head(len(load["predictions_preview"]))
    )
    assert [int(p) for p in load["predictions_preview"]] == [int(p) for p in expected]
    assert version.signature["feature_names"] == ["age", "income", "visits", "score"]
    assert version.validated_at is not None


def test_validation_runs_twice_safely(registered_model, scientist, sklearn_model):
    version = upload_version(registered_model, scientist, sklearn_model)
    before = version.validation_report
    assert services.version_validate(version_id=version.pk) is None  # nothing to claim
    version.refresh_from_db()
    assert version.state == VersionState.VALIDATED and version.validation_report == before


def test_abandoned_validation_is_reclaimed_after_the_stale_period(
    registered_model, scientist, sklearn_model, settings
):
    version = upload_version(registered_model, scientist, sklearn_model, validate=False)
    ModelVersion.objects.filter(pk=version.pk).update(
        state=VersionState.VALIDATING, validation_started_at=timezone.now()
    )
    assert services.version_validate(version_id=version.pk) is None  # still owned by its worker
    ModelVersion.objects.filter(pk=version.pk).update(
        validation_started_at=timezone.now()
        - timedelta(seconds=settings.MODELYARD_VALIDATION_STALE_SECONDS + 1)
    )
    assert services.version_validate(version_id=version.pk).state == VersionState.VALIDATED


def test_tampered_artifact_fails_validation(registered_model, scientist, sklearn_model):
    from django.core.files.storage import default_storage

    version = upload_version(registered_model, scientist, sklearn_model, validate=False)
    with open(default_storage.path(version.artifact_path), "ab") as handle:
        handle.write(b"tamper")
    version = services.version_validate(version_id=version.pk)
    assert version.state == VersionState.INVALID
    assert "sha256" in version.validation_report["error"]


def test_model_that_does_not_fit_the_reference_is_invalid(
    registered_model, scientist, sklearn_model
):
    version = services.version_upload(
        model=registered_model,
        uploader=scientist,
        artifact=SimpleUploadedFile("m.joblib", sklearn_model.artifact),
        framework="sklearn",
        metadata=VersionMetadata(),
        reference=SimpleUploadedFile("ref.csv", b"colour,size\nred,1\nblue,2\n"),
    )
    version = services.version_validate(version_id=version.pk)
    assert version.state == VersionState.INVALID
    assert version.validation_report["load"]["ok"] is False
    assert version.validation_report["error"]


def test_validation_without_reference_uses_signature_sample(
    registered_model, scientist, sklearn_model
):
    version = services.version_upload(
        model=registered_model,
        uploader=scientist,
        artifact=SimpleUploadedFile("m.joblib", sklearn_model.artifact),
        framework="sklearn",
        metadata=VersionMetadata(),
    )
    version = services.version_validate(version_id=version.pk)
    assert version.state == VersionState.VALIDATED, version.validation_report
    assert version.validation_report["load"]["sample_rows"] > 0


def test_state_changes_are_audited_with_actor(registered_model, scientist, sklearn_model):
    from core.models import AuditEvent

    upload_version(registered_model, scientist, sklearn_model, submit=True)
    changes = list(
        AuditEvent.objects.filter(action="version.state_changed")
        .order_by("id")
        .values_list("after__state", "actor_name")
    )
    assert changes == [("validating", ""), ("validated", ""), ("in_review", "dana")]


def test_sweep_finds_uploads_nobody_validated(registered_model, scientist, sklearn_model):
    from registry.selectors import versions_needing_validation

    version = upload_version(registered_model, scientist, sklearn_model, validate=False)
    assert versions_needing_validation() == []  # just uploaded: its task is on the way
    ModelVersion.objects.filter(pk=version.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    assert versions_needing_validation() == [version.pk]
    services.version_validate(version_id=version.pk)
    assert versions_needing_validation() == []
