"""Work whose worker died is done again, once: the sweep, leases, a dead child, a late build."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from batch import services
from batch.engine import runner
from batch.models import BatchChunk, BatchJob
from config.celery_app import app
from deployments.choices import BuildState
from deployments.models import Build
from tests.batch.conftest import csv_upload, input_frame


@pytest.fixture
def eager():
    """Tasks run inline where they are sent (what a worker would do with the message)."""
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def _job(setup, rows=3_000, **kwargs):
    return services.batch_job_create(
        model=setup["model"],
        actor=setup["owner"],
        version_number=1,
        upload=csv_upload(input_frame(rows)),
        id_column="row_id",
        chunk_rows=1_000,
        **kwargs,
    )


def test_sweep_reruns_the_chunk_of_a_dead_worker_and_a_lost_message(batch_setup, eager):
    from batch.services.chunk_claims import _claim_chunk

    job = _job(batch_setup)
    services.batch_job_prepare(job_id=job.pk)
    dead, lost, fine = BatchChunk.objects.filter(job=job).order_by("index")
    _claim_chunk(dead.pk, "worker-killed-with-9")  # claimed, then its worker vanished
    BatchChunk.objects.filter(pk=dead.pk).update(lease_expires_at=timezone.now())
    old = timezone.now() - timedelta(hours=1)
    BatchChunk.objects.filter(pk=lost.pk).update(enqueued_at=old)  # message never arrived
    BatchChunk.objects.filter(pk=fine.pk).update(enqueued_at=timezone.now())  # still queued

    actions = services.batch_jobs_sweep()
    assert actions == ["re-enqueued 1 expired and 1 waiting chunk(s)"]
    # The re-run follows on with the untried chunk 2 too (its queued message will skip it).
    chunks = BatchChunk.objects.filter(job=job).order_by("index")
    assert [(c.state, c.attempts) for c in chunks] == [("succeeded", 2), *[("succeeded", 1)] * 2]
    assert services.batch_jobs_sweep() == []  # nothing left to recover


def test_a_dead_child_is_replaced_for_the_next_chunk(batch_setup):
    job = _job(batch_setup)
    services.batch_job_prepare(job_id=job.pk)
    first, second, _ = BatchChunk.objects.filter(job=job).order_by("index")
    assert services.batch_chunk_run(chunk_id=first.pk).status == "done"
    old = runner._children["batchmodel:v1"]
    os.kill(old.proc.pid, signal.SIGKILL)
    old.proc.wait(5)
    assert services.batch_chunk_run(chunk_id=second.pk).status == "done"
    new = runner._children["batchmodel:v1"]
    assert new is not old and new.alive and new.info["pid"] != old.info["pid"]


def test_job_waits_for_the_bento_to_be_built_then_runs(
    batch_setup, eager, django_capture_on_commit_callbacks, settings
):
    Build.objects.filter(version=batch_setup["versions"][1]).update(
        state=BuildState.PENDING, bento_tag=""
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = _job(batch_setup)
    job = BatchJob.objects.get(pk=job.pk)
    build = Build.objects.get(version=batch_setup["versions"][1])
    assert build.state == BuildState.SUCCEEDED and build.archive_path  # built and exported
    assert (job.state, job.output_rows, job.bento_tag) == ("succeeded", 3_000, "batchmodel:v1")


def test_lease_is_renewed_while_a_chunk_runs(batch_setup, transactional_db, settings):
    from batch.services.chunk_claims import _claim_chunk, _LeaseKeeper

    settings.MODELYARD_BATCH_LEASE_SECONDS = 3
    job = _job(batch_setup)
    services.batch_job_prepare(job_id=job.pk)
    chunk = BatchChunk.objects.filter(job=job).first()
    token = _claim_chunk(chunk.pk, "slow-worker")
    claimed_until = BatchChunk.objects.get(pk=chunk.pk).lease_expires_at
    with _LeaseKeeper() as leases:
        leases.add(chunk.pk, token)
        time.sleep(2.5)
    renewed_until = BatchChunk.objects.get(pk=chunk.pk).lease_expires_at
    assert renewed_until > claimed_until + timedelta(seconds=0.5)


def test_two_workers_claiming_one_chunk_at_once_get_it_once(batch_setup, transactional_db):
    """The second claim waits for the first one's row lock and must then see the chunk taken
    (an UPDATE over a join re-checked nothing and handed the chunk to both)."""
    import threading

    from django.db import connection, transaction

    from batch.services.chunk_claims import _claim_chunk

    job = _job(batch_setup)
    services.batch_job_prepare(job_id=job.pk)
    chunk = BatchChunk.objects.filter(job=job).order_by("index").first()
    tokens: dict[str, object] = {}
    blocked = threading.Event()

    def second_worker():
        try:
            blocked.set()
            tokens["second"] = _claim_chunk(chunk.pk, "second")
        finally:
            connection.close()

    with transaction.atomic():
        tokens["first"] = _claim_chunk(chunk.pk, "first")  # holds the row lock until commit
        thread = threading.Thread(target=second_worker)
        thread.start()
        blocked.wait(5)
        time.sleep(0.5)  # the second UPDATE is now waiting for the lock
    thread.join(10)
    assert tokens["first"] is not None and tokens["second"] is None
    assert BatchChunk.objects.get(pk=chunk.pk).attempts == 1
