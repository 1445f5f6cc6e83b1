"""Work leases: the heartbeat a worker keeps on the build or rollout it is driving.

A worker that takes a build or a rollout's steps writes who it is (``host/pid``) and until
when it vouches for the work (``lease_until``, PostgreSQL's clock); a thread of the same
process renews it every third of the lease while the work runs (for a build, while the build
child runs). A worker killed with ``kill -9`` stops renewing, so its lease lapses within
``MODELYARD_WORK_LEASE_SECONDS`` and the reconcile sweep (every 15 s) takes the work over,
records which worker died holding what, and queues it again: seconds, where the old guess
("claimed more than the build timeout ago") took up to 20 minutes.

The lease is also what keeps a redelivered Celery message from running the work twice in
parallel: with acks_late, a message whose worker died comes back (immediately if only the pool
child died, after the broker's visibility timeout if the whole worker did), and its task finds
the lease held and leaves the work to the holder or to the sweep.

Every write is a conditional UPDATE evaluated by PostgreSQL with its own clock, so two workers
(or two sweeps) never both win, and the workers' clocks never matter.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.db.models import Model, Q, QuerySet
from django.db.models.functions import Now

logger = logging.getLogger(__name__)


def worker_identity() -> str:
    """Who holds a lease: the host and the process that runs the work."""
    return f"{socket.gethostname()}/{os.getpid()}"


def _lease_seconds() -> float:
    return float(settings.MODELYARD_WORK_LEASE_SECONDS)


def lease_fields(holder: str) -> dict[str, Any]:
    """The fields an UPDATE sets to give ``holder`` a fresh lease (PostgreSQL's clock)."""
    return {"lease_holder": holder, "lease_until": Now() + timedelta(seconds=_lease_seconds())}


def lease_take(*, queryset: QuerySet[Any], pk: int, holder: str) -> bool:
    """Take row ``pk``'s lease if nobody holds it (or ``holder`` already does)."""
    free = Q(lease_holder="") | Q(lease_holder=holder)
    return bool(queryset.filter(free, pk=pk).update(**lease_fields(holder)))


class LeaseHeld(Exception):
    """Another live worker holds the lease: the work is in hand, come back later."""


def lease_release(*, queryset: QuerySet[Any], pk: int, holder: str) -> None:
    queryset.filter(pk=pk, lease_holder=holder).update(lease_holder="", lease_until=None)


@dataclass(frozen=True)
class LapsedLease:
    """A lease nobody renews any more: its worker died (or never had one, for ``holder=""``)."""

    pk: int
    holder: str
    until: datetime | None

    def describe(self) -> str:
        if not self.holder:
            return "no worker held it"
        return f"lease expired at {self.until:%H:%M:%S}, worker {self.holder}"


def leases_lapsed(queryset: QuerySet[Any], *, unheld_counts: bool) -> list[LapsedLease]:
    """Rows of ``queryset`` whose lease has run out; with ``unheld_counts``, also rows that
    hold none (a build in ``building`` always should)."""
    lapsed = Q(lease_until__lt=Now()) & ~Q(lease_holder="")
    if unheld_counts:
        lapsed |= Q(lease_holder="")
    return [
        LapsedLease(pk=pk, holder=holder, until=until)
        for pk, holder, until in queryset.filter(lapsed).values_list(
            "pk", "lease_holder", "lease_until"
        )
    ]


def lease_break(*, queryset: QuerySet[Any], lapsed: LapsedLease, **fields: Any) -> bool:
    """End a lapsed lease (and write ``fields``) if it is still exactly the one seen, still
    lapsed: a worker that renewed meanwhile, or another sweep, wins instead."""
    still = queryset.filter(pk=lapsed.pk, lease_holder=lapsed.holder)
    still = (
        still.filter(lease_until__isnull=True)
        if lapsed.until is None
        else still.filter(lease_until=lapsed.until, lease_until__lt=Now())
    )
    return bool(still.update(lease_holder="", lease_until=None, **fields))


class _Renewer(threading.Thread):
    """Renews one lease every third of its length until stopped."""

    def __init__(self, model: type[Model], pk: int, holder: str) -> None:
        super().__init__(name=f"lease-{model.__name__.lower()}-{pk}", daemon=True)
        self.model, self.pk, self.holder = model, pk, holder
        self.stopping = threading.Event()
        self.lost = False
        # A lease taken inside a transaction not committed yet (a test's) is invisible to
        # every other connection, and renewing it from this thread's own connection would
        # wait on the caller's row lock until the caller ends: nothing to renew then.
        self.uncommitted = connection.in_atomic_block

    def run(self) -> None:
        try:
            while not self.stopping.wait(_lease_seconds() / 3):
                if self.uncommitted:
                    continue
                try:
                    renewed = self.model._default_manager.filter(
                        pk=self.pk, lease_holder=self.holder
                    ).update(lease_until=Now() + timedelta(seconds=_lease_seconds()))
                except DatabaseError as exc:  # PostgreSQL down: try again next beat
                    logger.warning(
                        "renewing the lease of %s %s failed: %s", self.model.__name__, self.pk, exc
                    )
                    continue
                if not renewed and not self.lost:
                    self.lost = True
                    logger.error(
                        "%s %s: lease lost (taken over after it lapsed); this worker's "
                        "result loses to the new holder's",
                        self.model.__name__,
                        self.pk,
                    )
        finally:
            connections.close_all()  # this thread's own connection


@contextmanager
def lease_kept(*, model: type[Model], pk: int, holder: str) -> Iterator[_Renewer]:
    """Renew ``holder``'s lease on ``model`` row ``pk`` while the block runs, release it after."""
    renewer = _Renewer(model, pk, holder)
    renewer.start()
    try:
        yield renewer
    finally:
        renewer.stopping.set()
        renewer.join(timeout=_lease_seconds())
        lease_release(queryset=model._default_manager.all(), pk=pk, holder=holder)
