"""Webhook endpoints over the API: created, changed (URL re-checked, secret rotated and shown
once) and deleted by admins only, every change audited without the secret."""

from __future__ import annotations

import pytest

from accounts.choices import Role
from core.models import AuditEvent
from monitoring.models import WebhookEndpoint

URL = "/api/v1/webhooks/"
PUBLIC = "https://93.184.216.34/hook"  # a literal public address: no DNS needed


@pytest.fixture
def admin_api(api_for, make_user, settings):
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = []
    return api_for(make_user(Role.ADMIN, "ada"))


def _create(api, **fields):
    created = api.post(URL, {"name": "ops", "url": PUBLIC, **fields}, format="json")
    assert created.status_code == 201, created.json()
    return created.json()


def _events(action: str, pk: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, object_id=str(pk)).order_by("id"))


def test_create_update_rotate_and_delete_are_audited(admin_api, deployment):
    body = _create(admin_api, kinds=["guard.breach"])
    pk, first_secret = body["id"], body["secret"]
    assert len(first_secret) >= 32
    (created,) = _events("webhook.created", pk)
    assert created.actor_name == "ada" and created.after["url"] == PUBLIC
    assert first_secret not in str(created.after)

    assert "secret" not in admin_api.get(f"{URL}{pk}/").json()
    changed = admin_api.patch(
        f"{URL}{pk}/",
        {
            "url": "https://93.184.216.35/other",
            "kinds": ["drift.detected", "rollback"],
            "active": False,
            "deployment": deployment.name,
        },
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    body = changed.json()
    assert body["secret"] is None  # not rotated: the secret is never shown again
    assert (body["url"], body["active"], body["deployment"]) == (
        "https://93.184.216.35/other",
        False,
        deployment.name,
    )
    endpoint = WebhookEndpoint.objects.get(pk=pk)
    assert endpoint.secret == first_secret and endpoint.kinds == ["drift.detected", "rollback"]

    rotated = admin_api.patch(f"{URL}{pk}/", {"rotate_secret": True}, format="json").json()
    assert rotated["secret"] and rotated["secret"] != first_secret
    assert WebhookEndpoint.objects.get(pk=pk).secret == rotated["secret"]
    assert "secret" not in admin_api.get(f"{URL}{pk}/").json()
    everywhere = admin_api.patch(f"{URL}{pk}/", {"deployment": ""}, format="json").json()
    assert everywhere["deployment"] is None

    update, rotation, widening = _events("webhook.updated", pk)
    assert update.before["url"] == PUBLIC and update.after["url"] == "https://93.184.216.35/other"
    assert (update.before["active"], update.after["active"]) == (True, False)
    assert update.after["secret_rotated"] is False
    assert rotation.after["secret_rotated"] is True
    assert rotated["secret"] not in str(rotation.after) and first_secret not in str(rotation.before)
    assert widening.after["deployment"] is None

    assert admin_api.delete(f"{URL}{pk}/").status_code == 204
    assert not WebhookEndpoint.objects.filter(pk=pk).exists()
    (deleted,) = _events("webhook.deleted", pk)
    assert deleted.before["url"] == "https://93.184.216.35/other"
    assert admin_api.get(f"{URL}{pk}/").status_code == 404
    assert admin_api.delete(f"{URL}{pk}/").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8000/api/",
        "http://10.0.0.5/hook",
        "http://user:pw@93.184.216.34/hook",
        "file:///etc/passwd",
    ],
)
def test_a_new_url_is_checked_against_ssrf_rules(admin_api, url):
    pk = _create(admin_api)["id"]
    refused = admin_api.patch(f"{URL}{pk}/", {"url": url, "active": False}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] in ("forbidden_target", "bad_url", "invalid")
    endpoint = WebhookEndpoint.objects.get(pk=pk)
    assert (endpoint.url, endpoint.active) == (PUBLIC, True)  # nothing half-written
    assert not _events("webhook.updated", pk)


def test_other_bad_changes_are_refused(admin_api):
    pk = _create(admin_api)["id"]
    for body, word in [
        ({"kinds": ["nonsense"]}, "kinds"),
        ({"deployment": "no-such-deployment"}, "no-such-deployment"),
        ({"secret": "mine"}, "secret"),
        ({"name": ""}, "name"),
    ]:
        refused = admin_api.patch(f"{URL}{pk}/", body, format="json")
        assert 400 <= refused.status_code < 500, body
        assert word in refused.json()["error"]["message"], refused.json()
    assert not _events("webhook.updated", pk)


def test_only_admins_change_webhooks(admin_api, api_for, operator):
    pk = _create(admin_api)["id"]
    api = api_for(operator)
    assert api.get(f"{URL}{pk}/").status_code == 403
    assert api.patch(f"{URL}{pk}/", {"active": False}, format="json").status_code == 403
    assert api.patch(f"{URL}{pk}/", {"rotate_secret": True}, format="json").status_code == 403
    assert api.delete(f"{URL}{pk}/").status_code == 403
    assert WebhookEndpoint.objects.get(pk=pk).active
