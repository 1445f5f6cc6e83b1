from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from batch import services
from batch.choices import JobState
from batch.engine import runner
from core.errors import InvalidState
from tests.batch.conftest import csv_upload, input_frame, read_output, run_job_inline


def test_uploaded_csv_job_predicts_every_row_in_order(batch_setup, monkeypatch):
    frame = input_frame(2_500)
    job = services.batch_job_create(
        model=batch_setup["model"],
        actor=batch_setup["owner"],
        version_number=1,
        upload=csv_upload(frame),
        id_column="row_id",
        chunk_rows=1_000,
    )
    # The model is loaded and run in the child only, never in this (the worker's) process:
    # here BentoML cannot be imported (an earlier test of this process may have imported it,
    # so "not in sys.modules" would depend on the order the tests ran in).
    monkeypatch.setitem(sys.modules, "bentoml", None)
    job = run_job_inline(job)
    monkeypatch.undo()
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.total_rows, job.chunks_total, job.rows_done) == (2500, 3, 2500)
    assert job.output_rows == 2500
    output = read_output(job)
    expected = batch_setup["built"][1].trained.model.predict(frame.drop(columns="row_id"))
    assert list(output.columns) == ["row_id", "prediction"]
    assert output["row_id"].tolist() == list(range(2500))
    assert np.array_equal(output["prediction"].to_numpy(), expected)
    child = runner._children["batchmodel:v1"]
    assert child.alive and child.info["pid"] != os.getpid() and child.info["native"]


def test_batch_settings_and_task_policy_took_effect(settings):
    from batch import tasks
    from config.celery_app import app

    for task in (
        tasks.batch_job_prepare_task,
        tasks.batch_chunk_run_task,
        tasks.batch_job_join_task,
        tasks.batch_jobs_sweep_task,
        tasks.batch_schedules_due_task,
    ):
        assert app.amqp.router.route({}, task.name)["queue"].name == "batch"
        assert task.acks_late and task.time_limit > task.soft_time_limit
    assert settings.MODELYARD_BATCH_ALLOWED_ROOTS == []  # uploads only unless configured
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"batch.jobs_sweep", "batch.schedules_due"} <= schedule


def _job(setup, frame, **kwargs):
    params = {"version_number": 1, "id_column": "row_id", "chunk_rows": 1_000, **kwargs}
    return services.batch_job_create(
        model=setup["model"], actor=setup["owner"], upload=csv_upload(frame), **params
    )


def _chunks(job):
    from batch.models import BatchChunk

    return list(BatchChunk.objects.filter(job=job).order_by("index"))


def test_second_delivery_of_a_chunk_task_writes_nothing_twice(batch_setup):
    from django.core.files.storage import default_storage

    from batch.models import BatchJob
    from batch.services import files
    from batch.tasks import batch_chunk_run_task

    job = _job(batch_setup, input_frame(1_500))
    services.batch_job_prepare(job_id=job.pk)
    first, second = _chunks(job)
    # The first delivery follows on with the job's other chunk while the child predicts.
    assert batch_chunk_run_task.apply(args=(first.pk,)).get() == "done"
    paths = [default_storage.path(files.chunk_name(job.pk, i)) for i in (0, 1)]
    written = [(os.stat(p).st_mtime_ns, os.stat(p).st_ino) for p in paths]
    # The same messages again (acks_late redelivery, the followed chunk's own message):
    # claimed by nobody, nothing written.
    for chunk in (first, second, first):
        assert batch_chunk_run_task.apply(args=(chunk.pk,)).get() == "skipped"
    assert [(os.stat(p).st_mtime_ns, os.stat(p).st_ino) for p in paths] == written
    job = BatchJob.objects.get(pk=job.pk)
    # The run that counted the last chunk joined the job too, in the same task.
    assert (job.rows_done, job.chunks_done, job.state, job.output_rows) == (
        1_500,
        2,
        "succeeded",
        1_500,
    )
    assert sorted(os.listdir(os.path.dirname(paths[0]))) == [
        "chunk-000000.arrow",
        "chunk-000001.arrow",
    ]


def test_a_chunk_message_whose_chunk_was_taken_starts_on_the_next_untried_one(batch_setup):
    from batch.services.chunk_claims import _claim_chunk
    from batch.tasks import batch_chunk_run_task

    job = _job(batch_setup, input_frame(3_000))
    services.batch_job_prepare(job_id=job.pk)
    first = _chunks(job)[0]
    assert _claim_chunk(first.pk, "a-run-that-followed-on") is not None  # still predicting
    # Its message finds the chunk taken; the worker would idle until the message of a chunk
    # nobody took reached it, so it runs the job's untried chunks instead.
    assert batch_chunk_run_task.apply(args=(first.pk,)).get() == "done"
    states = [(c.state, c.attempts, c.worker) for c in _chunks(job)]
    assert states[0] == ("running", 1, "a-run-that-followed-on")
    assert [s[:2] for s in states[1:]] == [("succeeded", 1), ("succeeded", 1)]
    # Without follow (a caller naming one chunk), a taken chunk is just skipped.
    assert services.batch_chunk_run(chunk_id=first.pk).status == "skipped"


def test_a_child_dying_with_a_chunk_queued_retries_both_alone(batch_setup, settings, monkeypatch):
    from batch.engine import runner
    from batch.models import BatchChunk, BatchJob

    settings.MODELYARD_BATCH_RETRY_DELAY_SECONDS = 0
    job = _job(batch_setup, input_frame(3_000))
    services.batch_job_prepare(job_id=job.pk)
    first, second, _third = _chunks(job)
    send, reply = runner.BatchChild.chunk_send, runner.BatchChild.chunk_reply

    def stopped(child, **chunk):  # the real child, frozen before it can answer anything
        os.kill(child.proc.pid, signal.SIGSTOP)
        send(child, **chunk)

    def dies_first(child, *, timeout):  # ... and killed with two chunks sent
        assert child.in_flight == 2
        child.proc.kill()
        child.proc.wait(5)
        return reply(child, timeout=timeout)

    monkeypatch.setattr(runner.BatchChild, "chunk_send", stopped)
    monkeypatch.setattr(runner.BatchChild, "chunk_reply", dies_first)
    outcome = services.batch_chunk_run(chunk_id=first.pk, follow=True)
    assert outcome.status == "retry" and "exited" in outcome.detail
    assert "then 1 more: retry" in outcome.detail  # the queued chunk died with the child
    states = {c.index: (c.state, c.attempts) for c in BatchChunk.objects.filter(job=job)}
    assert states == {0: ("pending", 1), 1: ("pending", 1), 2: ("pending", 0)}
    assert not os.listdir(default_storage.path(f"batch/jobs/{job.pk}/chunks"))  # no temp file
    monkeypatch.undo()
    # A fresh child takes them over; every row counts once.
    assert services.batch_chunk_run(chunk_id=second.pk, follow=True).status == "done"
    assert services.batch_chunk_run(chunk_id=first.pk, follow=True).status == "done"
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.rows_done, job.chunks_done, job.state) == (3_000, 3, "succeeded")
    output = read_output(job)
    assert output["row_id"].tolist() == list(range(3_000))


def test_output_begun_during_the_last_chunk_is_dropped_if_that_chunk_fails(
    batch_setup, settings, monkeypatch
):
    from batch.models import BatchChunk, BatchJob
    from batch.services import chunks

    settings.MODELYARD_BATCH_RETRY_DELAY_SECONDS = 0
    job = _job(batch_setup, input_frame(3_000))
    services.batch_job_prepare(job_id=job.pk)
    first, _, last = _chunks(job)
    drafts = []
    begin = chunks._output_draft

    def recorded(job, last):
        drafts.append(begin(job, last))
        return drafts[-1]

    # The last chunk disagrees with the staged file (a storage problem: retried alone).
    BatchChunk.objects.filter(pk=last.pk).update(row_stop=2_999)
    monkeypatch.setattr(chunks, "_output_draft", recorded)
    outcome = services.batch_chunk_run(chunk_id=first.pk, follow=True)
    monkeypatch.undo()
    assert outcome.detail.endswith("then 2 more: done, retry")
    # The output was begun with chunks 0 and 1 while chunk 2 ran, then dropped: no file left.
    (draft,) = drafts
    assert draft.next_index == 2 and draft.rows == 2_000
    assert not os.path.exists(default_storage.path(draft.name))
    assert not os.path.exists(os.path.dirname(default_storage.path(draft.name)))
    assert BatchJob.objects.get(pk=job.pk).state == "running"
    # Once the chunk is right, its run joins the job from the start; every row once.
    BatchChunk.objects.filter(pk=last.pk).update(row_stop=3_000)
    assert services.batch_chunk_run(chunk_id=last.pk, follow=True).status == "done"
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.state, job.output_rows) == ("succeeded", 3_000)
    assert read_output(job)["row_id"].tolist() == list(range(3_000))


def test_chunk_whose_lease_was_lost_counts_once(batch_setup):
    from batch.models import BatchChunk, BatchJob
    from batch.services.chunk_claims import _chunk_finish, _claim_chunk

    job = _job(batch_setup, input_frame(1_500))
    services.batch_job_prepare(job_id=job.pk)
    chunk = _chunks(job)[0]
    stale = _claim_chunk(chunk.pk, "worker-that-hangs")
    BatchChunk.objects.filter(pk=chunk.pk).update(lease_expires_at=timezone.now())
    assert services.batch_chunk_run(chunk_id=chunk.pk).status == "done"  # took it over
    # The first run wakes up and tries to count its (identical) result too.
    assert _chunk_finish(chunk, stale, chunk.rows, 1.0).status == "skipped"
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.rows_done, job.chunks_done) == (1_000, 1)
    assert BatchChunk.objects.get(pk=chunk.pk).attempts == 2


def test_transient_failure_retries_the_chunk_alone_then_fails_the_job(batch_setup, settings):
    from batch.models import BatchChunk, BatchJob

    job = _job(batch_setup, input_frame(2_500))
    services.batch_job_prepare(job_id=job.pk)
    first, second, third = _chunks(job)
    assert services.batch_chunk_run(chunk_id=first.pk).status == "done"
    settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS = 0  # the child cannot answer in time
    outcome = services.batch_chunk_run(chunk_id=second.pk)
    assert outcome.status == "retry" and "did not answer in time" in outcome.detail
    second.refresh_from_db()
    assert (second.state, second.attempts) == ("pending", 1)
    assert BatchJob.objects.get(pk=job.pk).state == "running"
    settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS = 600
    assert services.batch_chunk_run(chunk_id=second.pk).status == "done"  # retried alone
    settings.MODELYARD_BATCH_CHUNK_TIMEOUT_SECONDS = 0
    for _ in range(settings.MODELYARD_BATCH_CHUNK_MAX_ATTEMPTS):
        outcome = services.batch_chunk_run(chunk_id=third.pk)
    assert outcome.status == "failed"
    job = BatchJob.objects.get(pk=job.pk)
    assert job.state == "failed"
    assert job.error.startswith("rows 2000-2499 (chunk 2) failed 3 times")
    assert job.error_details == {"chunk": 2, "row_start": 2000, "row_stop": 2500}
    assert BatchChunk.objects.get(pk=first.pk).state == "succeeded"


def test_model_error_fails_the_job_with_the_row_range(batch_setup):
    from batch.models import BatchJob

    frame = input_frame(2_000)
    frame.loc[1_500, "income"] = np.nan  # LogisticRegression refuses NaN
    job = run_job_inline(_job(batch_setup, frame))
    assert job.state == JobState.FAILED
    # The contract refuses the null before the model sees it (row 500 of the chunk).
    assert job.error.startswith(
        "rows 1000-1999 (chunk 1): ContractError: row 500: feature 'income' may not be null"
    )
    assert set(_chunks(job)[i].state for i in range(2)) == {"succeeded", "failed"}
    assert BatchJob.objects.get(pk=job.pk).output_path == ""


def test_cancel_stops_the_remaining_chunks(batch_setup):
    from batch.models import BatchJob
    from core.models import AuditEvent

    job = _job(batch_setup, input_frame(3_000))
    services.batch_job_prepare(job_id=job.pk)
    first, second, _ = _chunks(job)
    services.batch_chunk_run(chunk_id=first.pk)
    services.batch_job_cancel(job=job, actor=batch_setup["owner"], reason="wrong input")
    assert services.batch_chunk_run(chunk_id=second.pk).status == "skipped"
    assert [c.state for c in _chunks(job)] == ["succeeded", "cancelled", "cancelled"]
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.state, job.rows_done) == ("cancelled", 1_000)
    with pytest.raises(InvalidState):
        services.batch_job_cancel(job=job, actor=batch_setup["owner"])
    cancelled = AuditEvent.objects.filter(object_id=str(job.pk), after__state="cancelled").get()
    assert cancelled.actor_name == "dana" and cancelled.reason == "wrong input"


def test_alias_job_records_the_version_it_ran(batch_setup):
    from registry.services.aliases import alias_set

    owner = batch_setup["owner"]
    alias_set(model=batch_setup["model"], name="nightly", version_number=2, actor=owner)
    frame = input_frame(1_200)
    job = services.batch_job_create(
        model=batch_setup["model"], actor=batch_setup["owner"], alias="nightly",
        upload=csv_upload(frame), id_column="row_id",
    )  # fmt: skip
    assert job.version is None
    # The alias moves after submission and before the job starts: the job runs v1.
    alias_set(model=batch_setup["model"], name="nightly", version_number=1, actor=owner)
    job = run_job_inline(job)
    assert (job.state, job.version.number, job.bento_tag) == ("succeeded", 1, "batchmodel:v1")
    expected = batch_setup["built"][1].trained.model.predict(frame.drop(columns="row_id"))
    assert np.array_equal(read_output(job)["prediction"].to_numpy(), expected)


def test_parquet_input_with_probabilities(batch_setup):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.batch.conftest import parquet_bytes

    frame = input_frame(800, with_id=False)
    job = services.batch_job_create(
        model=batch_setup["model"],
        actor=batch_setup["owner"],
        version_number=2,
        upload=SimpleUploadedFile("x.parquet", parquet_bytes(frame)),
        probabilities=True,
    )
    job = run_job_inline(job)
    assert (job.state, job.input_format) == ("succeeded", "parquet")
    output = read_output(job)
    model = batch_setup["built"][2].trained.model
    assert list(output.columns) == ["prediction", "probability_0", "probability_1"]
    assert np.array_equal(output["prediction"].to_numpy(), model.predict(frame))
    proba = output[["probability_0", "probability_1"]].to_numpy()
    assert np.allclose(proba, model.predict_proba(frame))


def test_second_delivery_of_prepare_and_join_does_nothing(batch_setup):
    from batch.models import BatchChunk, BatchJob
    from batch.tasks import batch_job_join_task, batch_job_prepare_task
    from core.models import AuditEvent

    job = _job(batch_setup, input_frame(1_500))
    # The prepare task goes on to run the job's chunks in its worker, and joins it.
    assert batch_job_prepare_task.apply(args=(job.pk,)).get() == "succeeded"
    chunk_ids = list(BatchChunk.objects.filter(job=job).values_list("pk", flat=True))
    output = BatchJob.objects.get(pk=job.pk).output_path
    assert batch_job_prepare_task.apply(args=(job.pk,)).get() == "succeeded"
    assert list(BatchChunk.objects.filter(job=job).values_list("pk", flat=True)) == chunk_ids
    for chunk_id in chunk_ids:
        assert services.batch_chunk_run(chunk_id=chunk_id).status == "skipped"
    assert batch_job_join_task.apply(args=(job.pk,)).get() == "succeeded"
    assert BatchJob.objects.get(pk=job.pk).output_path == output
    states = AuditEvent.objects.filter(object_id=str(job.pk), object_type="batch.batchjob")
    assert [e.after["state"] for e in states.order_by("id")] == [
        "queued",
        "running",
        "joining",
        "succeeded",
    ]


def test_too_many_chunks_is_a_clear_error(batch_setup, settings):
    settings.MODELYARD_BATCH_MAX_CHUNKS = 4
    job = run_job_inline(_job(batch_setup, input_frame(5_000), chunk_rows=1_000))
    assert job.state == "failed"
    assert job.error == (
        "5,000 rows in chunks of 1,000 would make 5 chunks; at most 4 are allowed "
        "(use chunk_rows >= 1,250)."
    )


def test_id_column_cannot_be_a_feature(batch_setup):
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="one of the model's features"):
        _job(batch_setup, input_frame(10), id_column="age")


def test_default_chunk_size_follows_the_width_of_the_input(batch_setup, settings):
    from batch.services import inputs

    settings.MODELYARD_BATCH_CHUNK_ROWS, settings.MODELYARD_BATCH_CHUNK_MB = 250_000, 64
    narrow = inputs.InputPlan(features=["a", "b", "c", "d"], types={}, id_column="row_id")
    wide = inputs.InputPlan(features=[f"f{i}" for i in range(1_000)], types={}, id_column="")
    text = inputs.InputPlan(features=["a"], types={"a": "string"}, id_column="")
    assert inputs.chunk_rows_default(narrow) == 250_000  # capped in rows
    assert inputs.chunk_rows_default(wide) == 64 * 2**20 // 8_000  # 8,388 rows of 64 MB
    assert inputs.chunk_rows_default(text) == 250_000
    settings.MODELYARD_BATCH_CHUNK_MB = 1
    assert inputs.chunk_rows_default(narrow) == 2**20 // 40
    # A job that does not say gets the default for its input; one that does keeps its own.
    job = _job(batch_setup, input_frame(10), chunk_rows=None)
    assert job.chunk_rows == 2**20 // 40
    assert _job(batch_setup, input_frame(10), chunk_rows=7).chunk_rows == 7


def _job_audits(job):
    from core.models import AuditEvent

    return AuditEvent.objects.filter(object_id=str(job.pk), object_type="batch.batchjob")


def test_a_move_the_job_table_refuses_raises_and_writes_nothing(batch_setup):
    from batch.models import BatchJob
    from batch.services.jobs import _set_state

    job = run_job_inline(_job(batch_setup, input_frame(500)))
    assert job.state == JobState.SUCCEEDED
    audits = _job_audits(job).count()
    with pytest.raises(InvalidState) as refused:
        _set_state(job, JobState.RUNNING, reason="again", chunks_total=99)
    assert refused.value.details == {"state": "succeeded", "requested": "running"}
    row = BatchJob.objects.get(pk=job.pk)
    assert (row.state, row.chunks_total, row.state_changed_at) == (
        "succeeded",
        1,
        job.state_changed_at,
    )
    assert _job_audits(job).count() == audits


def test_a_move_on_a_step_another_run_holds_raises_and_writes_nothing(batch_setup):
    import uuid

    from batch.models import BatchJob
    from batch.services.jobs import _claim_step, _set_state

    job = _job(batch_setup, input_frame(500))
    BatchJob.objects.filter(pk=job.pk).update(state=JobState.JOINING)
    held = _claim_step(job.pk, start=JobState.JOINING, to=JobState.JOINING)
    job = BatchJob.objects.get(pk=job.pk)
    audits = _job_audits(job).count()
    with pytest.raises(InvalidState):
        _set_state(job, JobState.SUCCEEDED, token=uuid.uuid4(), output_path="someone-else")
    row = BatchJob.objects.get(pk=job.pk)
    assert (row.state, row.step_token, row.output_path) == ("joining", held, "")
    assert _job_audits(job).count() == audits


def test_a_prepare_waiting_for_its_build_hands_the_step_back_only_while_it_holds_it(batch_setup):
    import uuid

    from batch.models import BatchJob
    from batch.services.jobs import _claim_step
    from batch.services.staging import _build_ready
    from deployments.choices import BuildState
    from deployments.models import Build

    version = batch_setup["versions"][1]
    Build.objects.filter(version=version).update(state=BuildState.BUILDING)
    job = _job(batch_setup, input_frame(500))
    token = _claim_step(job.pk, start=JobState.QUEUED, to=JobState.PREPARING)
    claimed = BatchJob.objects.get(pk=job.pk)

    assert _build_ready(job.pk, uuid.uuid4(), version) is None  # not this run's step
    row = BatchJob.objects.get(pk=job.pk)
    assert (row.state, row.step_token, row.state_changed_at) == (
        "preparing",
        token,
        claimed.state_changed_at,
    )

    assert _build_ready(job.pk, token, version) is None  # this run's: handed back
    row = BatchJob.objects.get(pk=job.pk)
    assert (row.state, row.step_token) == ("queued", None)
    assert row.state_changed_at > claimed.state_changed_at
