"""Alerts: detected from what the platform recorded, delivered by signed webhooks
(monitoring/services/webhooks.py) and e-mail.

Detection reads rollouts, drift windows and guard breaches; it needs no hook in the layers
below (deployments never imports monitoring). Each alert has a unique ``key``
(``rollout:42:live``), so detecting the same thing again is harmless.
"""

from __future__ import annotations

import json
import logging
import smtplib
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from deployments.choices import RolloutKind, RolloutState
from deployments.models import Deployment, Rollout
from monitoring.choices import AlertKind, DriftStatus, GuardAction
from monitoring.models import Alert, DriftWindow, GuardBreach, WebhookDelivery, WebhookEndpoint
from monitoring.services.retrain import retrain_requests

logger = logging.getLogger(__name__)

_LOOKBACK = timedelta(days=1)


# --- detection ------------------------------------------------------------------------------


def _alert(
    key: str, kind: str, deployment: Deployment, message: str, payload: dict[str, Any]
) -> Alert | None:
    """Create the alert once; None if it existed (so its deliveries are not made twice)."""
    if Alert.objects.filter(key=key).exists():
        return None
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                key=key,
                kind=kind,
                deployment=deployment,
                message=message,
                payload=json.loads(json.dumps(payload, cls=DjangoJSONEncoder)),
            )
    except IntegrityError:  # a concurrent detection won the race
        return None
    endpoints = WebhookEndpoint.objects.filter(active=True).filter(
        Q(deployment__isnull=True) | Q(deployment=deployment)
    )
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(alert=alert, endpoint=e, next_attempt_at=timezone.now())
        for e in endpoints
        if not e.kinds or kind in e.kinds
    )
    return alert


def alerts_detect(*, now: datetime | None = None) -> list[Alert]:
    """Create alerts for what happened lately: finished/failed rollouts, rollbacks, drift,
    guard breaches and the retrain requests they make. Idempotent (unique keys)."""
    since = (now or timezone.now()) - _LOOKBACK
    created: list[Alert | None] = []
    for rollout in Rollout.objects.select_related("deployment", "version", "created_by").filter(
        Q(finished_at__gte=since) | Q(kind=RolloutKind.ROLLBACK, created_at__gte=since)
    ):
        base = {
            "deployment": rollout.deployment.name,
            "rollout": rollout.pk,
            "version": rollout.version.number,
            "state": rollout.state,
        }
        if rollout.kind == RolloutKind.ROLLBACK:
            automatic = rollout.created_by_id is None
            evidence = next((s.get("evidence") for s in rollout.steps if s.get("evidence")), None)
            created.append(
                _alert(
                    f"rollback:{rollout.pk}",
                    AlertKind.ROLLBACK,
                    rollout.deployment,
                    f"{rollout.deployment}: {'automatic' if automatic else 'manual'} rollback "
                    f"to v{rollout.version.number}"
                    + (f" ({rollout.reason})" if rollout.reason else ""),
                    {
                        **base,
                        "automatic": automatic,
                        "by": rollout.created_by.username if rollout.created_by else None,
                        "reason": rollout.reason,
                        "evidence": evidence,
                    },
                )
            )
        elif rollout.state == RolloutState.LIVE:
            created.append(
                _alert(
                    f"rollout:{rollout.pk}:live",
                    AlertKind.ROLLOUT_DONE,
                    rollout.deployment,
                    f"{rollout.deployment}: v{rollout.version.number} is live",
                    base,
                )
            )
        elif rollout.state == RolloutState.FAILED:
            created.append(
                _alert(
                    f"rollout:{rollout.pk}:failed",
                    AlertKind.ROLLOUT_FAILED,
                    rollout.deployment,
                    f"{rollout.deployment}: rollout of v{rollout.version.number} failed: "
                    f"{rollout.error[:200]}",
                    {**base, "error": rollout.error},
                )
            )
    for window in DriftWindow.objects.select_related("deployment").filter(
        status=DriftStatus.DRIFT, computed_at__gte=since
    ):
        flagged = list(
            window.features.filter(status=DriftStatus.DRIFT).values_list("feature", flat=True)
        )
        created.append(
            _alert(
                f"drift:{window.pk}",
                AlertKind.DRIFT_DETECTED,
                window.deployment,
                f"{window.deployment}: drift on v{window.version} in {', '.join(flagged)}",
                {
                    "deployment": window.deployment.name,
                    "version": window.version,
                    "window": {"start": window.start, "end": window.end, "kind": window.kind},
                    "features": flagged,
                },
            )
        )
    # Prediction drift and data quality are judged on the same windows; each alerts once per
    # window, naming the version, what broke, the window and what to do about it.
    for window in DriftWindow.objects.select_related("deployment").filter(
        Q(prediction__status=DriftStatus.DRIFT) | Q(data_quality__status="breach"),
        computed_at__gte=since,
    ):
        span = {"start": window.start, "end": window.end, "kind": window.kind}
        base = {"deployment": window.deployment.name, "version": window.version, "window": span}
        when = f"{window.start:%Y-%m-%d %H:%M}-{window.end:%H:%M} UTC"
        if (window.prediction or {}).get("status") == DriftStatus.DRIFT:
            created.append(
                _alert(
                    f"prediction-drift:{window.pk}",
                    AlertKind.PREDICTION_DRIFT,
                    window.deployment,
                    f"{window.deployment}: the predictions of v{window.version} drifted from "
                    f"its reference over {when}; check the inputs' drift and the labels' "
                    "accuracy, and consider retraining on recent data",
                    {**base, "prediction": window.prediction},
                )
            )
        if (window.data_quality or {}).get("status") == "breach":
            issues = list((window.data_quality or {}).get("issues") or [])
            created.append(
                _alert(
                    f"data-quality:{window.pk}",
                    AlertKind.DATA_QUALITY,
                    window.deployment,
                    f"{window.deployment}: data quality of v{window.version}'s inputs over "
                    f"{when}: {'; '.join(issues[:3])}{' ...' if len(issues) > 3 else ''}; "
                    "check the clients sending these fields",
                    {**base, "data_quality": window.data_quality},
                )
            )
    for breach in GuardBreach.objects.select_related("deployment").filter(at__gte=since):
        created.append(
            _alert(
                f"guard:{breach.pk}",
                AlertKind.GUARD_BREACH,
                breach.deployment,
                f"{breach.deployment}: {breach.message}",
                {
                    "deployment": breach.deployment.name,
                    "version": breach.version,
                    "rules": breach.rules,
                    "rolled_back": breach.action == GuardAction.ROLLED_BACK,
                    "evidence": breach.evidence,
                },
            )
        )
    # What the breaches above ask of the people who train the model (services/retrain.py).
    for request in retrain_requests(since=since):
        created.append(
            _alert(
                request.key,
                AlertKind.RETRAIN_REQUESTED,
                request.deployment,
                request.message,
                request.payload,
            )
        )
    alerts = [a for a in created if a is not None]
    if settings.MODELYARD_ALERT_EMAILS:
        unsent = Alert.objects.filter(emailed_at__isnull=True, created_at__gte=since)
        alerts_email(alerts=list(unsent))
    return alerts


def alerts_email(*, alerts: list[Alert]) -> int:
    """One e-mail per alert through Django's mail backend; marks them so they go once."""
    sent = 0
    for alert in alerts:
        # Claim first: a concurrent run must not send the same mail.
        if not Alert.objects.filter(pk=alert.pk, emailed_at__isnull=True).update(
            emailed_at=timezone.now()
        ):
            continue
        try:
            send_mail(
                subject=f"[Modelyard] {alert.kind}: {alert.message[:120]}",
                message=json.dumps(alert.payload, indent=2, cls=DjangoJSONEncoder),
                from_email=None,
                recipient_list=list(settings.MODELYARD_ALERT_EMAILS),
                fail_silently=False,
            )
        except (OSError, smtplib.SMTPException):
            # Unclaim, so the next detection run mails it again.
            logger.exception("alert %s could not be e-mailed", alert.pk)
            Alert.objects.filter(pk=alert.pk).update(emailed_at=None)
            continue
        sent += 1
    return sent
