"""The schedules API: CRUD on /api/v1/batch/schedules/, audited; rollout and rollback by
moving the alias, and each fired job records the exact version the alias named."""

from __future__ import annotations

import pytest

from accounts.choices import Role
from batch import services
from batch.models import BatchJob, BatchSchedule
from core.models import AuditEvent
from registry.services.aliases import alias_set
from tests.batch.conftest import input_frame, run_job_inline
from tests.batch.test_schedules import _fire

URL = "/api/v1/batch/schedules/"


@pytest.fixture
def daily_input(batch_setup, tmp_path, settings):
    settings.MODELYARD_BATCH_ALLOWED_ROOTS = [str(tmp_path)]
    path = tmp_path / "daily.parquet"
    input_frame(900).to_parquet(path, index=False)
    alias_set(
        model=batch_setup["model"], name="nightly", version_number=1, actor=batch_setup["owner"]
    )
    return path


def _create(api, path, **fields):
    body = {
        "name": "nightly-scores",
        "model": "batchmodel",
        "alias": "nightly",
        "cron": "0 2 * * *",
        "input_path": str(path),
        "id_column": "row_id",
        **fields,
    }
    return api.post(URL, body, format="json")


def _events(action: str, schedule_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, object_id=str(schedule_id)).order_by("id"))


def test_create_read_update_delete_are_audited(batch_setup, daily_input, api_for):
    api = api_for(batch_setup["owner"])
    created = _create(api, daily_input)
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["model"], body["alias"], body["alias_version"]) == ("batchmodel", "nightly", 1)
    assert body["next_run_at"].endswith("T02:00:00Z") and body["enabled"] is True
    sid = body["id"]

    listed = api.get(URL, {"model__name": "batchmodel"})
    assert listed.status_code == 200 and [s["id"] for s in listed.json()["results"]] == [sid]
    assert listed.json()["results"][0]["alias_version"] == 1
    assert api.get(f"{URL}{sid}/").json()["cron"] == "0 2 * * *"

    changed = api.patch(f"{URL}{sid}/", {"cron": "30 6 * * 1", "enabled": False}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["cron"] == "30 6 * * 1" and changed.json()["enabled"] is False
    assert changed.json()["next_run_at"].endswith("T06:30:00Z")

    assert api.delete(f"{URL}{sid}/").status_code == 204
    assert not BatchSchedule.objects.filter(pk=sid).exists()
    assert api.get(f"{URL}{sid}/").status_code == 404

    (created_event,) = _events("batch_schedule.created", sid)
    assert created_event.actor_name == "dana" and created_event.after["alias"] == "nightly"
    (updated,) = _events("batch_schedule.updated", sid)
    assert (updated.before["cron"], updated.after["cron"]) == ("0 2 * * *", "30 6 * * 1")
    assert (updated.before["enabled"], updated.after["enabled"]) == (True, False)
    (deleted,) = _events("batch_schedule.deleted", sid)
    assert deleted.before["name"] == "nightly-scores" and deleted.after is None


@pytest.mark.parametrize("cron", ["* * *", "61 * * * *", "0 25 * * *", "x y z w v", ""])
def test_bad_cron_is_a_clear_400_and_creates_nothing(batch_setup, daily_input, api_for, cron):
    refused = _create(api_for(batch_setup["owner"]), daily_input, cron=cron)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "cron" in error["message"]
    assert error["code"] in ("bad_cron", "invalid")
    assert not BatchSchedule.objects.exists()
    assert not AuditEvent.objects.filter(action="batch_schedule.created").exists()


def test_bad_update_changes_nothing(batch_setup, daily_input, api_for):
    api = api_for(batch_setup["owner"])
    sid = _create(api, daily_input).json()["id"]
    for body, status, word in [
        ({"cron": "0 2 * *", "enabled": False}, 400, "cron"),
        ({"alias": "nope"}, 404, "nope"),
        ({"input_path": "/etc/passwd"}, 403, ""),
        ({"chunk_rows": 0}, 400, "chunk_rows"),
        ({"colour": "blue"}, 400, "colour"),
    ]:
        refused = api.patch(f"{URL}{sid}/", body, format="json")
        assert refused.status_code == status, (body, refused.json())
        assert word in refused.json()["error"]["message"]
    schedule = BatchSchedule.objects.get(pk=sid)
    assert (schedule.cron, schedule.alias, schedule.enabled) == ("0 2 * * *", "nightly", True)
    assert not _events("batch_schedule.updated", sid)


def test_other_bad_inputs_are_refused(batch_setup, daily_input, api_for, tmp_path):
    api = api_for(batch_setup["owner"])
    assert _create(api, daily_input, alias="weekly").status_code == 404
    assert _create(api, tmp_path / "missing.parquet").status_code == 400
    assert _create(api, daily_input, name="bad name!").status_code == 400
    assert _create(api, daily_input, model="nosuchmodel").status_code == 404
    assert _create(api, daily_input).status_code == 201
    taken = _create(api, daily_input, name="NIGHTLY-scores")
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "name_taken"
    assert BatchSchedule.objects.count() == 1


def test_running_batches_needs_the_capability(batch_setup, daily_input, api_for, make_user):
    owner_api = api_for(batch_setup["owner"])
    sid = _create(owner_api, daily_input).json()["id"]
    viewer = api_for(make_user(Role.VIEWER))
    assert viewer.get(URL).status_code == 200
    assert _create(viewer, daily_input, name="other").status_code == 403
    assert viewer.patch(f"{URL}{sid}/", {"enabled": False}, format="json").status_code == 403
    assert viewer.delete(f"{URL}{sid}/").status_code == 403
    assert viewer.post(f"{URL}{sid}/rollout/", {"version": 2}, format="json").status_code == 403
    assert BatchSchedule.objects.get(pk=sid).enabled


def _fired(schedule: BatchSchedule) -> AuditEvent:
    return AuditEvent.objects.filter(
        action="batch_schedule.fired", object_id=str(schedule.pk)
    ).latest("id")


def test_rollout_and_rollback_over_the_api_change_what_the_next_run_uses(
    batch_setup, daily_input, api_for, make_user
):
    api = api_for(batch_setup["owner"])
    schedule = BatchSchedule.objects.get(pk=_create(api, daily_input).json()["id"])

    first = _fire(schedule)
    assert (first.state, first.version.number) == ("succeeded", 1)
    fired = _fired(schedule)
    assert fired.via == "system"
    assert fired.after == {
        "job": first.pk,
        "model": "batchmodel",
        "alias": "nightly",
        "version": 1,
        "version_id": batch_setup["versions"][1].pk,
    }

    operator = api_for(make_user(Role.OPERATOR))
    moved = operator.post(
        f"{URL}{schedule.pk}/rollout/", {"version": 2, "reason": "v2 approved"}, format="json"
    )
    assert moved.status_code == 200, moved.json()
    assert moved.json() == {"model": "batchmodel", "alias": "nightly", "version": 2}
    assert api.get(f"{URL}{schedule.pk}/").json()["alias_version"] == 2
    second = _fire(schedule)
    assert second.version.number == 2 and _fired(schedule).after["version"] == 2

    back = operator.post(
        f"{URL}{schedule.pk}/rollback/", {"reason": "scores look off"}, format="json"
    )
    assert back.status_code == 200 and back.json()["version"] == 1
    third = _fire(schedule)
    assert third.version.number == 1 and _fired(schedule).after["version"] == 1

    moves = list(
        AuditEvent.objects.filter(action="alias.set", object_repr="batchmodel@nightly").order_by(
            "id"
        )
    )
    # The fixture's first pointing, then the rollout and the rollback.
    assert [(m.before or {}).get("version") for m in moves] == [None, 1, 2]
    assert [m.after["version"] for m in moves] == [1, 2, 1]
    assert moves[1].reason == "batch rollout (schedule nightly-scores): v2 approved"
    assert moves[2].reason.startswith("batch rollback (schedule nightly-scores")
    assert moves[2].reason.endswith(": scores look off")
    fired_versions = [
        e.after["version"]
        for e in AuditEvent.objects.filter(
            action="batch_schedule.fired", object_id=str(schedule.pk)
        ).order_by("id")
    ]
    assert fired_versions == [1, 2, 1]

    refused = operator.post(f"{URL}{schedule.pk}/rollout/", {"version": 9}, format="json")
    assert refused.status_code == 404


def test_a_fired_job_runs_the_version_named_when_it_fired(batch_setup, daily_input, api_for):
    # The alias moves after the schedule fired but before a worker prepared the job.
    api = api_for(batch_setup["owner"])
    schedule = BatchSchedule.objects.get(pk=_create(api, daily_input).json()["id"])
    (job,) = services.batch_schedules_due(now=schedule.next_run_at)
    alias_set(
        model=batch_setup["model"], name="nightly", version_number=2, actor=batch_setup["owner"]
    )
    done = run_job_inline(BatchJob.objects.get(pk=job.pk))
    assert done.state == "succeeded" and done.version.number == 1
    assert _fired(schedule).after["version"] == 1


def test_list_queries_are_bounded(batch_setup, daily_input, api_for, django_assert_max_num_queries):
    api = api_for(batch_setup["owner"])
    for name in ("a-nightly", "b-nightly", "c-nightly"):
        assert _create(api, daily_input, name=name).status_code == 201
    with django_assert_max_num_queries(6):
        listed = api.get(URL)
    assert listed.status_code == 200
    assert [s["alias_version"] for s in listed.json()["results"]] == [1, 1, 1]
