"""Alerts: detected once, delivered by signed webhooks with retries, SSRF-checked targets."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from core.errors import InvalidInput
from deployments.choices import RolloutKind, RolloutState
from deployments.models import Rollout
from monitoring.choices import AlertKind, DeliveryState
from monitoring.models import Alert, WebhookDelivery
from monitoring.services import (
    alerts_detect,
    webhook_deliver,
    webhook_endpoint_create,
    webhook_url_check,
)
from monitoring.tasks import alerts_detect_task, webhooks_deliver_task


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.1.2.3/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ],
)
def test_webhook_targets_inside_the_network_are_refused(url, settings):
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(InvalidInput):
        webhook_url_check(url)


def test_an_admin_can_allow_an_internal_host_explicitly(settings):
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    webhook_url_check("http://127.0.0.1:9/hook")
    with pytest.raises(InvalidInput):
        webhook_url_check("http://localhost:9/hook")  # only the host that was listed


def _manual_rollback(deployment, user):
    return Rollout.objects.create(
        deployment=deployment,
        version=deployment.slots.get(color="blue").version,
        kind=RolloutKind.ROLLBACK,
        target_slot="blue",
        state=RolloutState.BAKING,
        created_by=user,
        reason="v2 looks off",
    )


def test_a_rollback_alert_is_signed_delivered_and_logged(deployment, receiver_factory, operator):
    receiver = receiver_factory()
    endpoint = webhook_endpoint_create(name="ops", url=receiver.url, actor=operator)
    rollback = _manual_rollback(deployment, operator)

    [alert] = alerts_detect()
    assert alert.kind == AlertKind.ROLLBACK and alert.payload["automatic"] is False
    assert webhooks_deliver_task.apply().get() == 1

    [(headers, body)] = receiver.requests
    expected = hmac.new(
        endpoint.secret.encode(),
        headers["X-Modelyard-Timestamp"].encode() + b"." + body,
        hashlib.sha256,
    ).hexdigest()
    assert headers["X-Modelyard-Signature"] == f"sha256={expected}"
    assert headers["X-Modelyard-Event"] == "rollback"
    sent = json.loads(body)
    assert sent["payload"]["rollout"] == rollback.pk and sent["deployment"] == deployment.name
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.attempts == 1
    assert delivery.log[0]["status"] == 200


def test_detecting_twice_alerts_once(deployment, receiver_factory, operator):
    webhook_endpoint_create(name="ops", url=receiver_factory().url, actor=operator)
    _manual_rollback(deployment, operator)
    assert alerts_detect_task.apply().get() == 1
    assert alerts_detect_task.apply().get() == 0
    assert Alert.objects.count() == 1 and WebhookDelivery.objects.count() == 1


def test_failed_deliveries_are_retried_with_backoff_then_given_up(
    deployment, receiver_factory, operator, settings
):
    settings.MODELYARD_WEBHOOK_MAX_ATTEMPTS = 3
    settings.MODELYARD_WEBHOOK_BACKOFF_SECONDS = 30
    receiver = receiver_factory([500, 302, 503])
    webhook_endpoint_create(name="ops", url=receiver.url, actor=operator)
    _manual_rollback(deployment, operator)
    alerts_detect()
    delivery = WebhookDelivery.objects.get()

    first = webhook_deliver(delivery_id=delivery.pk)
    assert first.state == DeliveryState.PENDING and first.last_status_code == 500
    backoff = (first.next_attempt_at - timezone.now()).total_seconds()
    assert 25 < backoff <= 30
    # Not due yet: a second worker does nothing.
    assert webhook_deliver(delivery_id=delivery.pk).attempts == 1

    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    second = webhook_deliver(delivery_id=delivery.pk)
    assert second.last_status_code == 302 and "redirects are not followed" in second.last_error
    assert 55 < (second.next_attempt_at - timezone.now()).total_seconds() <= 60
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    third = webhook_deliver(delivery_id=delivery.pk)
    assert third.state == DeliveryState.FAILED and third.attempts == 3
    assert [entry["status"] for entry in third.log] == [500, 302, 503]
    assert len(receiver.requests) == 3  # the redirect target was never called


def test_endpoints_filter_by_kind_and_alerts_go_by_mail_too(
    deployment, receiver_factory, operator, settings
):
    settings.MODELYARD_ALERT_EMAILS = ["oncall@example.com"]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    webhook_endpoint_create(
        name="drift-only", url=receiver_factory().url, actor=operator, kinds=["drift.detected"]
    )
    Rollout.objects.filter(deployment=deployment, state=RolloutState.BAKING).update(
        state=RolloutState.LIVE, finished_at=timezone.now() - timedelta(minutes=1)
    )
    alerts = alerts_detect()
    assert {a.kind for a in alerts} == {AlertKind.ROLLOUT_DONE}
    assert WebhookDelivery.objects.count() == 0
    assert len(mail.outbox) == len(alerts)
    assert mail.outbox[0].to == ["oncall@example.com"]
    alerts_detect()
    assert len(mail.outbox) == len(alerts)


def test_webhooks_api_is_for_admins_and_refuses_internal_targets(
    api_for, operator, make_user, settings
):
    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = []
    payload = {"name": "x", "url": "http://169.254.169.254/hook"}
    assert api_for(operator).post("/api/v1/webhooks/", payload, format="json").status_code == 403
    admin = make_user("admin", "ada")
    refused = api_for(admin).post("/api/v1/webhooks/", payload, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "forbidden_target"


def test_deliveries_connect_to_the_address_that_was_checked(settings):
    from monitoring.services.webhooks import _pinned

    settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS = []
    assert webhook_url_check("https://93.184.216.34:8443/hook") == ["93.184.216.34"]
    # A later DNS answer cannot point the request elsewhere: the URL carries the address,
    # the Host header and the TLS server name (certificate check) carry the name.
    url, headers, extensions = _pinned("https://hooks.example.com:8443/x?y=1", "93.184.216.34")
    assert url == "https://93.184.216.34:8443/x?y=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    assert _pinned("http://h.example.com/x", "2001:db8::1")[0] == "http://[2001:db8::1]/x"
