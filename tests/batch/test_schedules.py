"""Schedules run a job on an alias; moving the alias is the batch rollout and rollback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from batch import services
from batch.models import BatchJob
from core.errors import InvalidInput, InvalidState
from core.models import AuditEvent
from registry.services.aliases import alias_set
from tests.batch.conftest import input_frame, read_output, run_job_inline


def test_cron_next_follows_the_five_fields():
    at = datetime(2026, 3, 2, 10, 7, tzinfo=UTC)  # a Monday
    assert services.cron_next("*/15 * * * *", after=at) == datetime(2026, 3, 2, 10, 15, tzinfo=UTC)
    assert services.cron_next("30 2 * * *", after=at) == datetime(2026, 3, 3, 2, 30, tzinfo=UTC)
    assert services.cron_next("0 6 * * 5", after=at) == datetime(2026, 3, 6, 6, 0, tzinfo=UTC)
    for bad in ("* * *", "61 * * * *", "x y z w v"):
        with pytest.raises(InvalidInput):
            services.cron_next(bad, after=at)


@pytest.fixture
def schedule(batch_setup, tmp_path, settings):
    settings.MODELYARD_BATCH_ALLOWED_ROOTS = [str(tmp_path)]
    path = tmp_path / "daily.parquet"
    input_frame(900).to_parquet(path, index=False)
    owner, model = batch_setup["owner"], batch_setup["model"]
    alias_set(model=model, name="nightly", version_number=1, actor=owner)
    return services.batch_schedule_create(
        name="nightly-scores",
        model=model,
        alias="nightly",
        cron="0 2 * * *",
        input_path=str(path),
        id_column="row_id",
        actor=owner,
    )


def _fire(schedule) -> BatchJob:
    schedule.refresh_from_db()
    due = schedule.next_run_at
    jobs = services.batch_schedules_due(now=due)
    assert len(jobs) == 1
    # A second tick at the same moment (two beats, a redelivered tick) starts nothing.
    assert services.batch_schedules_due(now=due) == []
    schedule.refresh_from_db()
    assert schedule.next_run_at == due + timedelta(days=1)
    return run_job_inline(jobs[0])


def test_schedule_runs_alias_then_rollout_and_rollback_change_the_version(batch_setup, schedule):
    owner = batch_setup["owner"]
    assert services.batch_schedules_due(now=schedule.next_run_at - timedelta(seconds=1)) == []
    first = _fire(schedule)
    assert (first.state, first.version.number, first.alias) == ("succeeded", 1, "nightly")

    services.batch_schedule_rollout(
        schedule=schedule, version_number=2, actor=owner, reason="v2 approved"
    )
    second = _fire(schedule)
    assert (second.state, second.version.number) == ("succeeded", 2)
    frame = input_frame(900).drop(columns="row_id")
    v2 = batch_setup["built"][2].trained.model
    assert np.array_equal(read_output(second)["prediction"].to_numpy(), v2.predict(frame))

    services.batch_schedule_rollback(schedule=schedule, actor=owner, reason="v2 scores look off")
    third = _fire(schedule)
    assert third.version.number == 1
    assert list(
        BatchJob.objects.filter(schedule=schedule).values_list("version__number", flat=True)
    ) == [1, 2, 1]

    moves = AuditEvent.objects.filter(action="alias.set", object_repr="batchmodel@nightly")
    reasons = [(e.before or {}).get("version", None) for e in moves.order_by("id")]
    assert reasons == [None, 1, 2]
    assert [e.after["version"] for e in moves.order_by("id")] == [1, 2, 1]
    assert moves.order_by("id")[1].reason == "batch rollout (schedule nightly-scores): v2 approved"
    assert moves.order_by("id")[2].reason.startswith("batch rollback (schedule nightly-scores")


def test_rollout_needs_an_approved_version(batch_setup, schedule):
    from registry.choices import VersionState

    batch_setup["versions"][2].state = VersionState.IN_REVIEW
    batch_setup["versions"][2].save()
    with pytest.raises(InvalidState, match="needs an approved version"):
        services.batch_schedule_rollout(
            schedule=schedule, version_number=2, actor=batch_setup["owner"]
        )


def test_rollback_without_history_is_refused(batch_setup, schedule):
    with pytest.raises(InvalidState, match="nothing to roll back to"):
        services.batch_schedule_rollback(schedule=schedule, actor=batch_setup["owner"])


def test_due_schedule_whose_input_vanished_records_why(batch_setup, schedule, tmp_path):
    (tmp_path / "daily.parquet").unlink()
    assert services.batch_schedules_due(now=schedule.next_run_at) == []
    schedule.refresh_from_db()
    assert "does not exist" in schedule.last_error
    assert not BatchJob.objects.exists()


def test_schedule_input_must_be_under_the_allowed_roots(batch_setup, tmp_path, settings):
    from core.errors import NotAllowed

    settings.MODELYARD_BATCH_ALLOWED_ROOTS = [str(tmp_path / "inbox")]
    (tmp_path / "inbox").mkdir()
    outside = tmp_path / "x.csv"
    input_frame(5).to_csv(outside, index=False)
    alias_set(model=batch_setup["model"], name="n", version_number=1, actor=batch_setup["owner"])
    with pytest.raises(NotAllowed):
        services.batch_schedule_create(
            name="s",
            model=batch_setup["model"],
            alias="n",
            cron="* * * * *",
            input_path=str(outside),
            actor=batch_setup["owner"],
        )
