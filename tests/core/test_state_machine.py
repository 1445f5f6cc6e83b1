from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.api.exceptions import exception_handler
from core.choices import AuditAction
from core.errors import InvalidState
from core.models import AuditEvent
from core.state_machine import StateMachine, json_append
from registry.choices import VersionState
from registry.models import ModelVersion
from registry.services.transitions import VERSION_STATES

S = VersionState
ACTION = AuditAction.VERSION_STATE_CHANGED


def _version(model, user, state: str = S.VALIDATED, number: int = 1) -> ModelVersion:
    version = ModelVersion.objects.create(
        model=model,
        number=number,
        state=state,
        created_by=user,
        framework="sklearn",
        artifact_format="joblib",
        safe_format=False,
        artifact_path=f"artifacts/{uuid.uuid4().hex}.joblib",
        artifact_sha256="0" * 64,
        artifact_size=1,
    )
    # An old timestamp, so a move that forgets to set it is seen.
    ModelVersion.objects.filter(pk=version.pk).update(
        state_changed_at=timezone.now() - timedelta(days=1)
    )
    version.refresh_from_db()
    return version


def _audits(version: ModelVersion):
    return AuditEvent.objects.filter(action=ACTION, object_id=str(version.pk))


def test_a_table_with_an_unknown_target_is_refused_at_definition():
    table = {state: set() for state in S.values}
    table[S.VALIDATED] = {S.IN_REVIEW, "publishd"}
    with pytest.raises(ImproperlyConfigured, match="unknown targets \\['publishd'\\]"):
        StateMachine(ModelVersion, table)


def test_a_table_that_forgets_a_state_is_refused_at_definition():
    table = {state: set() for state in S.values if state != S.REJECTED}
    with pytest.raises(ImproperlyConfigured, match="states without a row \\['rejected'\\]"):
        StateMachine(ModelVersion, table)


@pytest.mark.django_db
def test_an_allowed_move_writes_state_timestamp_extra_fields_and_audit_in_one_update(
    registered_model, scientist
):
    version = _version(registered_model, scientist, S.VALIDATING)
    before = version.state_changed_at
    validated_at = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        moved = VERSION_STATES.move(
            version,
            S.VALIDATED,
            fields={"validated_at": validated_at, "validation_report": {"ok": True}},
            actor=scientist,
            audit_action=ACTION,
            reason="checks passed",
            evidence={"checks": 3},
        )
    assert moved is True
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    for column in ('"state" =', '"state_changed_at" =', '"validated_at" =', '"validation_report"'):
        assert column in updates[0]
    assert '"state" = ' in updates[0].split("WHERE")[1]  # conditional on the state it was read in
    row = ModelVersion.objects.get(pk=version.pk)
    assert row.state == S.VALIDATED
    assert row.state_changed_at > before
    assert row.validated_at == validated_at
    assert row.validation_report == {"ok": True}
    assert version.state == S.VALIDATED and version.state_changed_at == row.state_changed_at
    (event,) = _audits(version)
    assert event.actor_id == scientist.pk
    assert event.reason == "checks passed"
    assert event.before == {"state": "validating"}
    assert event.after == {"state": "validated", "checks": 3}


@pytest.mark.django_db
def test_a_given_time_is_the_state_changed_at_so_another_field_can_equal_it(
    registered_model, scientist
):
    version = _version(registered_model, scientist, S.VALIDATING)
    at = timezone.now() - timedelta(minutes=5)
    assert VERSION_STATES.move(version, S.VALIDATED, at=at, fields={"validated_at": at})
    row = ModelVersion.objects.get(pk=version.pk)
    assert row.state_changed_at == at == row.validated_at


@pytest.mark.django_db
def test_a_move_without_an_audit_action_writes_no_audit_record(registered_model, scientist):
    version = _version(registered_model, scientist, S.VALIDATING)
    assert VERSION_STATES.move(version, S.VALIDATED)
    assert not _audits(version).exists()


@pytest.mark.django_db
def test_a_refused_move_raises_invalid_state_with_the_error_body_and_writes_nothing(
    registered_model, scientist
):
    version = _version(registered_model, scientist, S.APPROVED)
    with pytest.raises(InvalidState) as caught:
        VERSION_STATES.move(version, S.IN_REVIEW, actor=scientist, audit_action=ACTION)
    response = exception_handler(caught.value, {})
    assert response is not None and response.status_code == 409
    assert response.data == {
        "error": {
            "code": "invalid_state",
            "message": "churn v1 is approved; it cannot become in_review.",
            "details": {"state": "approved", "requested": "in_review"},
        }
    }
    row = ModelVersion.objects.get(pk=version.pk)
    assert row.state == S.APPROVED and row.state_changed_at == version.state_changed_at
    assert not _audits(version).exists()


@pytest.mark.django_db
def test_a_terminal_state_allows_no_move(registered_model, scientist):
    version = _version(registered_model, scientist, S.ARCHIVED)
    for state in S.values:
        assert not VERSION_STATES.can(S.ARCHIVED, state)
    with pytest.raises(InvalidState):
        VERSION_STATES.check(version, S.UPLOADED)


@pytest.mark.django_db
def test_a_writer_holding_a_stale_copy_loses_and_writes_nothing(registered_model, scientist):
    first = _version(registered_model, scientist, S.IN_REVIEW)
    stale = ModelVersion.objects.get(pk=first.pk)
    assert VERSION_STATES.move(first, S.APPROVED, audit_action=ACTION)
    assert not VERSION_STATES.move(
        stale, S.REJECTED, fields={"description": "late"}, audit_action=ACTION
    )
    row = ModelVersion.objects.get(pk=first.pk)
    assert row.state == S.APPROVED and row.description == ""
    assert stale.state == S.IN_REVIEW  # the loser's object is not dressed up as moved
    assert _audits(first).count() == 1


@pytest.mark.django_db
def test_a_where_condition_that_no_longer_holds_blocks_the_move(registered_model, scientist):
    # Batch jobs move only while the step token they claimed is still theirs.
    version = _version(registered_model, scientist, S.VALIDATING)
    ModelVersion.objects.filter(pk=version.pk).update(training_run_id="token-b")
    assert not VERSION_STATES.move(version, S.VALIDATED, where=Q(training_run_id="token-a"))
    assert VERSION_STATES.move(version, S.VALIDATED, where=Q(training_run_id="token-b"))


@pytest.mark.django_db
def test_a_json_append_extends_the_log_as_stored_not_the_callers_copy(registered_model, scientist):
    version = _version(registered_model, scientist, S.VALIDATING)
    # Another writer appended to the log after this copy was read.
    ModelVersion.objects.filter(pk=version.pk).update(reference_schema=[{"message": "earlier"}])
    assert VERSION_STATES.move(
        version,
        S.VALIDATED,
        fields={"reference_schema": json_append("reference_schema", {"message": "validated"})},
    )
    expected = [{"message": "earlier"}, {"message": "validated"}]
    assert ModelVersion.objects.get(pk=version.pk).reference_schema == expected
    assert version.reference_schema == expected  # the database's result, read back


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_writers_from_the_same_state_exactly_one_wins(registered_model, scientist):
    version = _version(registered_model, scientist, S.IN_REVIEW)
    both_read = threading.Barrier(2, timeout=10)
    results: dict[str, bool | BaseException] = {}

    def writer(to: str) -> None:
        try:
            with transaction.atomic():
                mine = ModelVersion.objects.select_related("model").get(pk=version.pk)
                both_read.wait()  # each has read in_review before either writes
                results[to] = VERSION_STATES.move(
                    mine, to, fields={"description": f"by {to}"}, audit_action=ACTION
                )
        except BaseException as exc:  # surfaced by the assert below, not lost in the thread
            results[to] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(to,)) for to in (S.APPROVED, S.REJECTED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results.values(), key=str) == [False, True], results
    (winner,) = [to for to, won in results.items() if won is True]
    row = ModelVersion.objects.get(pk=version.pk)
    assert row.state == winner and row.description == f"by {winner}"
    (event,) = _audits(version)
    assert event.after == {"state": winner}
