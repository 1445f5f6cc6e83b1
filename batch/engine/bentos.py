"""A job's batch child, started on the version's Bento on this machine.

The Bento comes through deployments' one door (``version_bento_local``): batch knows
nothing of the BentoML store's layout, exported archives or the runtime backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from batch.engine import runner
from deployments.services import version_bento_local

if TYPE_CHECKING:
    from batch.models import BatchJob


def child_ready(job: BatchJob) -> runner.BatchChild:
    assert job.version_id is not None  # resolved when the job was prepared, before any chunk
    return runner.child_for(
        bento=version_bento_local(version_id=job.version_id, bento_tag=job.bento_tag),
        start_timeout=settings.MODELYARD_BATCH_CHILD_START_TIMEOUT_SECONDS,
        threads=settings.MODELYARD_BATCH_CHILD_THREADS,
    )
