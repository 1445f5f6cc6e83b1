"""Artifact integrity: a Bento is built from, and a slot started for, the reviewed file only."""

from __future__ import annotations

import logging
from pathlib import Path

from deployments.models import Deployment
from deployments.services._steps import event_record
from registry.choices import ReviewDecision
from registry.models import ModelVersion
from registry.services.artifacts import artifact_local_path, file_sha256

logger = logging.getLogger(__name__)


ARTIFACT_MISMATCH_EVENT = "artifact_mismatch"


def artifact_mismatch(*, version: ModelVersion, path: Path | None = None) -> str | None:
    """Re-hash the stored artifact (streamed) and say why it is not the reviewed file, if so.

    Approvals are bound to the sha256 recorded at upload, which every review's evidence
    repeats: the file a Bento is built from, or a slot is started for, must still hash to
    it. ``path`` is a local copy already at hand (the build's); None reads from storage.
    Returns None when the file is the one that was reviewed.
    """
    expected = version.artifact_sha256
    reviewed = {
        evidence.get("artifact_sha256")
        for evidence in version.reviews.filter(decision=ReviewDecision.APPROVE).values_list(
            "evidence", flat=True
        )
    } - {None}
    if reviewed - {expected}:
        return (
            f"the approvals of {version} name artifact sha256 {', '.join(sorted(reviewed))}, "
            f"but the version records {expected}: refusing to deploy it"
        )
    try:
        if path is not None:
            actual = file_sha256(path)
        else:
            with artifact_local_path(version.artifact_path) as local:
                actual = file_sha256(local)
    except OSError as exc:
        return f"the stored artifact of {version} cannot be read ({exc.strerror or exc})"
    if actual != expected:
        return (
            f"the stored artifact of {version} has sha256 {actual}, but {expected} was "
            "uploaded and reviewed: refusing to deploy a file nobody approved"
        )
    return None


def artifact_mismatch_record(*, deployments: list[Deployment], error: str) -> None:
    logger.error("artifact check failed: %s", error)
    for deployment in deployments:
        event_record(deployment=deployment, kind=ARTIFACT_MISMATCH_EVENT, message=error)
