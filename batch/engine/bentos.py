"""A job's Bento on this machine and the child that loads it.

Batch's one use of deployments' BentoML integration and runtime backends (where the store
is, whether a Bento is in it, importing an exported one): moved here as they were, for the
one public deployments function that is to replace them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from batch.engine import runner
from deployments import backends
from deployments.integrations import bentoml as bento
from deployments.models import Build
from registry.services.artifacts import artifact_local_path

if TYPE_CHECKING:
    from batch.models import BatchJob


def _bento_dir(bento_tag: str) -> Path:
    home = backends.bento_home()
    name, _, version = bento_tag.partition(":")
    return home / "bentos" / name / version


def _bento_available(bento_tag: str, version_id: int) -> None:
    """Import the version's exported Bento when this machine's store lacks it."""
    home = backends.bento_home()
    if bento.bento_exists(home=home, bento_tag=bento_tag):
        return
    build = Build.objects.get(version_id=version_id)
    if not build.archive_path:
        raise runner.ChildError(f"Bento {bento_tag} is not on this machine and was not exported")
    with artifact_local_path(build.archive_path) as archive:
        bento.bento_import(home=home, archive=archive)


def _child_ready(job: BatchJob) -> runner.BatchChild:
    _bento_available(job.bento_tag, job.version_id)
    return runner.child_for(
        bento_tag=job.bento_tag,
        bento_dir=_bento_dir(job.bento_tag),
        home=backends.bento_home(),
        start_timeout=settings.MODELYARD_BATCH_CHILD_START_TIMEOUT_SECONDS,
        threads=settings.MODELYARD_BATCH_CHILD_THREADS,
    )
