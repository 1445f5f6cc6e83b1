"""Resource samples of serving slots: the measured side of cost per prediction."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments import backends
from deployments.choices import SlotState
from deployments.models import Slot
from deployments.runtime.base import RuntimeBackendError
from monitoring.models import SlotResourceSample

logger = logging.getLogger(__name__)


@transaction.atomic
def resources_sample() -> list[SlotResourceSample]:
    """Record CPU-seconds and RSS of every ready slot's process tree, once.

    A slot the backend no longer knows (stopped meanwhile) is skipped: the next sample of a
    restarted server starts a new series, since its CPU counter restarted from zero.
    """
    backend = backends.runtime_backend()
    samples = []
    for slot in Slot.objects.select_related("deployment", "version").filter(
        state=SlotState.READY, version__isnull=False
    ):
        try:
            measured = backend.slot_resources(slot_key=slot.runtime_key)
        except RuntimeBackendError as exc:
            logger.info("no resource sample of %s: %s", slot, exc)
            continue
        if measured.process_count == 0 or slot.version is None:  # None: excluded by the query
            continue
        samples.append(
            SlotResourceSample(
                deployment=slot.deployment,
                slot=slot.color,
                version=slot.version.number,
                cpu_seconds=measured.cpu_seconds,
                rss_bytes=measured.rss_bytes,
                process_count=measured.process_count,
                taken_at=measured.taken_at,
            )
        )
    return SlotResourceSample.objects.bulk_create(samples)


def resources_retention(*, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.MODELYARD_RESOURCE_RETENTION_DAYS)
    deleted, _ = SlotResourceSample.objects.filter(taken_at__lt=cutoff).delete()
    return deleted
