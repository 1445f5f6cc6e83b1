"""Retrain requests (issue 20): a quality guard or a drift window that breached its policy asks
for a retrain, once, as the signed webhook event ``retrain.requested``.

Real PostgreSQL and Redis (the monitoring suite's own server): labelled predictions go through
the stream and the ingester, drifted inputs through the gateway's own sampler; the event is
POSTed to a real HTTP server on 127.0.0.1 that checks what it receives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.models import Deployment, Rollout, Slot
from monitoring.choices import AlertKind, DriftWindowKind, GuardAction
from monitoring.models import Alert, GuardBreach, WebhookDelivery
from monitoring.services import (
    alerts_detect,
    drift_compute_window,
    guards_check_deployment,
    webhook_endpoint_create,
)
from monitoring.tasks import webhooks_deliver_task
from tests.monitoring.test_drift import _sample_traffic
from tests.monitoring.test_quality import _contract, _labelled_traffic


def _retrain_alerts() -> list[Alert]:
    return list(Alert.objects.filter(kind=AlertKind.RETRAIN_REQUESTED))


def _accuracy_guarded(monitoring_redis, deployment, versions, *, live_accuracy) -> None:
    for version in versions.values():
        type(version).objects.filter(pk=version.pk).update(
            contract=_contract("label", ["no", "yes"])
        )
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"max_accuracy_drop": 0.1, "min_labels": 100}
    )
    deployment.refresh_from_db()
    day_before = (timezone.now() - timedelta(days=1)).timestamp()
    _labelled_traffic(monitoring_redis, deployment, 1, n=300, accuracy=0.9, ts=day_before)
    _labelled_traffic(
        monitoring_redis, deployment, 2, n=200, accuracy=live_accuracy, ts=time.time() - 30
    )


def test_an_accuracy_breach_requests_a_retrain_by_a_signed_webhook_once(
    monitoring_redis, deployment, versions, receiver_factory, operator
):
    receiver = receiver_factory()
    endpoint = webhook_endpoint_create(
        name="trainer", url=receiver.url, actor=operator, kinds=[AlertKind.RETRAIN_REQUESTED]
    )
    _accuracy_guarded(monitoring_redis, deployment, versions, live_accuracy=0.55)

    breach = guards_check_deployment(deployment=deployment)
    assert breach is not None and breach.action == GuardAction.ROLLED_BACK
    alerts_detect()
    assert guards_check_deployment(deployment=deployment) is None  # checked again: nothing new
    alerts_detect()
    assert webhooks_deliver_task.apply().get() == 1
    assert webhooks_deliver_task.apply().get() == 0

    # The endpoint chose this event only: the guard breach and rollback alerts went elsewhere.
    [(headers, body)] = receiver.requests
    expected = hmac.new(
        endpoint.secret.encode(),
        headers["X-Modelyard-Timestamp"].encode() + b"." + body,
        hashlib.sha256,
    ).hexdigest()
    assert headers["X-Modelyard-Signature"] == f"sha256={expected}"
    assert headers["X-Modelyard-Event"] == "retrain.requested"
    sent = json.loads(body)
    payload = sent["payload"]
    accuracy = breach.evidence["accuracy"]
    assert (sent["kind"], sent["deployment"]) == ("retrain.requested", deployment.name)
    assert (payload["deployment"], payload["version"], payload["metric"]) == (
        deployment.name,
        2,
        "accuracy",
    )
    assert payload["value"] == pytest.approx(accuracy["value"]) and payload["value"] < 0.7
    assert payload["threshold"] == pytest.approx(accuracy["baseline"] - 0.1)
    assert payload["baseline"] == pytest.approx(accuracy["baseline"])
    assert payload["baseline_version"] == 1
    assert payload["window"] == breach.evidence["window"]
    assert (
        payload["evidence"]["labelled"] == 200 and payload["evidence"]["baseline_labelled"] == 300
    )
    assert payload["source"] == {
        "kind": "guard",
        "guard_breach": breach.pk,
        "rollout": breach.rollout_id,
        "rule": "accuracy",
        "policy": {"max_accuracy_drop": 0.1},
        "rolled_back": True,
    }
    assert "v2 was rolled back to v1" in payload["suggested_action"]
    assert "retrain" in payload["suggested_action"]
    message = sent["message"]
    assert "v2" in message and "accuracy" in message and payload["suggested_action"] in message
    assert breach.evidence["window"]["start"][:16].replace("T", " ") in message
    [alert] = _retrain_alerts()
    assert WebhookDelivery.objects.filter(alert=alert).count() == 1


def test_a_version_whose_labels_stay_good_requests_no_retrain(
    monitoring_redis, deployment, versions, receiver_factory, operator
):
    receiver = receiver_factory()
    webhook_endpoint_create(name="trainer", url=receiver.url, actor=operator)
    _accuracy_guarded(monitoring_redis, deployment, versions, live_accuracy=0.88)
    assert guards_check_deployment(deployment=deployment) is None
    alerts_detect()
    webhooks_deliver_task.apply().get()
    assert _retrain_alerts() == []
    assert all(json.loads(body)["kind"] != "retrain.requested" for _, body in receiver.requests)


def test_a_drift_guard_rechecking_the_same_rollout_requests_one_retrain(
    deployment, monitoring_redis, settings, receiver_factory, operator
):
    webhook_endpoint_create(
        name="trainer",
        url=receiver_factory().url,
        actor=operator,
        kinds=[AlertKind.RETRAIN_REQUESTED],
    )
    # No previous version: the rollback is refused, so the guard keeps checking (and records
    # the breach again after a quarter of an hour).
    Slot.objects.filter(deployment=deployment, color="blue").update(version=None)
    Rollout.objects.filter(deployment=deployment).update(previous_version=None)
    Rollout.objects.filter(deployment=deployment, version__number=1).delete()
    Deployment.objects.filter(pk=deployment.pk).update(
        guard_policy={"drift": "drift", "window_seconds": 3600}
    )
    deployment.refresh_from_db()
    _sample_traffic(settings, deployment, version=2, rows=1000, shift_age=20.0)
    now = timezone.now()

    first = guards_check_deployment(deployment=deployment, now=now)
    alerts_detect()
    again = guards_check_deployment(deployment=deployment, now=now + timedelta(minutes=16))
    alerts_detect()

    assert first is not None and again is not None and GuardBreach.objects.count() == 2
    assert first.action == GuardAction.ROLLBACK_REFUSED
    [alert] = _retrain_alerts()
    assert alert.payload["metric"] in ("psi", "ks") and alert.payload["feature"] == "age"
    assert alert.payload["value"] >= alert.payload["threshold"]
    assert alert.payload["source"]["rolled_back"] is False
    assert "age" in alert.payload["suggested_action"]
    assert WebhookDelivery.objects.count() == 1


@pytest.mark.parametrize(("shift", "requested"), [(20.0, True), (0.0, False)])
def test_a_scheduled_drift_window_requests_a_retrain_once_and_a_clean_one_none(
    deployment, monitoring_redis, settings, versions, shift, requested
):
    _sample_traffic(settings, deployment, version=2, rows=1000, shift_age=shift)
    end = timezone.now()
    start = end - timedelta(minutes=10)
    for _ in range(2):  # the same window computed again replaces its row: one request
        window = drift_compute_window(
            deployment=deployment,
            version=versions[2],
            start=start,
            end=end,
            kind=DriftWindowKind.SCHEDULED,
        )
        alerts_detect()

    assert window is not None
    if not requested:
        assert window.status == "ok" and _retrain_alerts() == []
        return
    [alert] = _retrain_alerts()
    payload = alert.payload
    assert (payload["version"], payload["feature"]) == (2, "age")
    assert payload["metric"] in ("psi", "ks")
    assert payload["threshold"] == window.thresholds[f"{payload['metric']}_drift"]
    assert payload["window"] == {"start": start.isoformat(), "end": end.isoformat()}
    assert payload["source"] == {"kind": "drift_window", "drift_window": window.pk}
    assert set(payload["evidence"]["features"]) == {"age"}
    assert "v2" in alert.message and payload["metric"] in alert.message
    assert f"{start:%Y-%m-%d %H:%M}" in alert.message
