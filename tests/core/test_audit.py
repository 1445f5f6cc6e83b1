from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from core.choices import AuditAction
from core.models import AuditEvent
from core.services import audit_record

pytestmark = pytest.mark.django_db


def _event() -> AuditEvent:
    return audit_record(
        actor=None, action=AuditAction.MODEL_CREATED, object_type="x", object_id="1", reason="test"
    )


def test_audit_rows_cannot_be_updated_through_the_orm():
    event = _event()
    event.reason = "rewritten"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        event.save()


def test_audit_rows_cannot_be_deleted_even_with_raw_sql():
    event = _event()
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM core_auditevent WHERE id = %s", [event.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_audit_api_is_read_only_and_filterable(scientist, api_for):
    _event()
    api = api_for(scientist)
    listed = api.get("/api/v1/audit/", {"action": "model.created"})
    assert listed.status_code == 200
    assert {row["action"] for row in listed.json()["results"]} == {"model.created"}
    assert api.post("/api/v1/audit/", {}).status_code == 405
    event_id = listed.json()["results"][0]["id"]
    assert api.delete(f"/api/v1/audit/{event_id}/").status_code == 405
