"""Webhooks: endpoints (their targets checked against SSRF) and signed deliveries.

Each delivery is a ``POST`` of the alert as JSON with

- ``X-Modelyard-Event``: the alert kind (``AlertKind``: ``guard.breach``, ``retrain.requested``,
  ...; an endpoint's ``kinds`` choose among them); ``X-Modelyard-Delivery``: the delivery id
- ``X-Modelyard-Timestamp``: unix seconds
- ``X-Modelyard-Signature``: ``sha256=`` + hex HMAC-SHA256 of ``"{timestamp}.{body}"`` with the
  endpoint's secret (the timestamp inside the MAC stops replays of old deliveries)

A 2xx answer is success; anything else (redirects included: they are never followed) is
retried with exponential backoff up to ``MODELYARD_WEBHOOK_MAX_ATTEMPTS`` times, each
attempt logged on the delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from core.choices import AuditAction
from core.errors import InvalidInput
from core.services import audit_record
from deployments.models import Deployment
from monitoring.choices import AlertKind, DeliveryState
from monitoring.models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

# Cloud metadata names that resolve to link-local addresses on the cloud itself; refused by
# name too, in case a resolver maps them elsewhere.
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


# --- webhook targets ------------------------------------------------------------------------


def _host_allowed(host: str) -> bool:
    allowed = {h.lower() for h in settings.MODELYARD_WEBHOOK_ALLOWED_HOSTS}
    return host.lower() in allowed


def webhook_url_check(url: str) -> list[str]:
    """Refuse URLs that would make the platform call into its own network (SSRF).

    http(s) only, no credentials in the URL, and every address the host resolves to must be
    public: loopback, private, link-local (cloud metadata lives there), multicast, reserved
    and unspecified addresses are refused unless an admin listed the host in
    ``MODELYARD_WEBHOOK_ALLOWED_HOSTS``. Checked again before every delivery, since DNS
    answers change. Returns the checked addresses (empty for an allowed host), which the
    delivery connects to, so a second DNS answer cannot swap in an internal one.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("A webhook URL must start with http:// or https://.", code="bad_url")
    if parts.username or parts.password:
        raise InvalidInput("A webhook URL must not carry credentials.", code="bad_url")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidInput("A webhook URL needs a host.", code="bad_url")
    if _host_allowed(host):
        return []
    if host.lower() in _METADATA_HOSTS:
        raise InvalidInput(f"{host} is a cloud metadata service.", code="forbidden_target")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidInput(f"Bad port in webhook URL: {exc}", code="bad_url") from exc
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise InvalidInput(f"{host} does not resolve: {exc}", code="unresolvable") from exc
    addresses: list[str] = []
    for info in infos:
        # str(): typeshed allows an int here (an IPv6 address when Python lacks IPv6 support).
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise InvalidInput(
                f"{host} resolves to {address}, which is not a public address; an admin can "
                "allow the host in MODELYARD_WEBHOOK_ALLOWED_HOSTS.",
                code="forbidden_target",
                details={"host": host, "address": str(address)},
            )
        addresses.append(str(address))
    return addresses


def _pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL with its host replaced by the checked address, plus the Host header and the
    TLS server name that keep the request (and certificate check) about the real host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return (
        parts._replace(netloc=netloc).geturl(),
        {"Host": host_header},
        {"sni_hostname": host} if parts.scheme == "https" else {},
    )


@transaction.atomic
def webhook_endpoint_create(
    *,
    name: str,
    url: str,
    actor: User | None,
    kinds: list[str] | None = None,
    deployment: Deployment | None = None,
    secret: str = "",
) -> WebhookEndpoint:
    """A webhook target (URL checked against SSRF); the secret is generated if not given."""
    webhook_url_check(url)
    _kinds_check(list(kinds or []))
    endpoint = WebhookEndpoint.objects.create(
        name=name,
        url=url,
        secret=secret or secrets.token_urlsafe(32),
        kinds=list(kinds or []),
        deployment=deployment,
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    audit_record(
        actor=actor,
        action=AuditAction.WEBHOOK_CREATED,
        obj=endpoint,
        after=_webhook_document(endpoint),
    )
    return endpoint


def _kinds_check(kinds: list[str]) -> None:
    unknown = set(kinds) - set(AlertKind.values)
    if unknown:
        raise InvalidInput(
            f"Unknown alert kinds: {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(AlertKind.values)}.",
            code="unknown_kind",
        )


def _webhook_document(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What an audit event records of an endpoint: never the secret itself."""
    return {
        "name": endpoint.name,
        "url": endpoint.url,
        "kinds": list(endpoint.kinds),
        "deployment": endpoint.deployment.name if endpoint.deployment else None,
        "active": endpoint.active,
    }


_UNSET: Any = object()


@transaction.atomic
def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    actor: User | None,
    name: str | None = None,
    url: str | None = None,
    kinds: list[str] | None = None,
    deployment: Deployment | None = _UNSET,
    active: bool | None = None,
    rotate_secret: bool = False,
) -> tuple[WebhookEndpoint, str | None]:
    """Change what is given (a new URL is checked against SSRF again); with
    ``rotate_secret`` a new secret replaces the old one at once. Returns the endpoint and
    the new secret (None unless rotated): it is shown once, like at creation."""
    endpoint = (
        WebhookEndpoint.objects.select_for_update(of=("self",))
        .select_related("deployment")
        .get(pk=endpoint.pk)
    )
    before = _webhook_document(endpoint)
    if name is not None:
        if not name.strip():
            raise InvalidInput("name: must not be blank.", code="invalid")
        endpoint.name = name
    if url is not None:
        webhook_url_check(url)
        endpoint.url = url
    if kinds is not None:
        _kinds_check(kinds)
        endpoint.kinds = list(kinds)
    if deployment is not _UNSET:
        endpoint.deployment = deployment
    if active is not None:
        endpoint.active = active
    secret = None
    if rotate_secret:
        secret = endpoint.secret = secrets.token_urlsafe(32)
    endpoint.save()
    after = _webhook_document(endpoint)
    if after != before or rotate_secret:
        audit_record(
            actor=actor,
            action=AuditAction.WEBHOOK_UPDATED,
            obj=endpoint,
            before=before,
            after={**after, "secret_rotated": rotate_secret},
        )
    return endpoint, secret


@transaction.atomic
def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: User | None) -> None:
    """Remove an endpoint with its delivery log; alerts stay."""
    endpoint = (
        WebhookEndpoint.objects.select_for_update(of=("self",))
        .select_related("deployment")
        .get(pk=endpoint.pk)
    )
    audit_record(
        actor=actor,
        action=AuditAction.WEBHOOK_DELETED,
        obj=endpoint,
        before=_webhook_document(endpoint),
    )
    endpoint.delete()


def webhook_sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# --- delivery -------------------------------------------------------------------------------


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=settings.MODELYARD_WEBHOOK_BACKOFF_SECONDS * 2 ** (attempts - 1))


def webhook_deliver(*, delivery_id: int) -> WebhookDelivery:
    """One attempt of one delivery, claimed first (a lease) so two workers never both send."""
    lease = timezone.now() + timedelta(seconds=settings.MODELYARD_WEBHOOK_TIMEOUT_SECONDS * 4)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=timezone.now()
    ).update(next_attempt_at=lease)
    delivery = WebhookDelivery.objects.select_related("alert__deployment", "endpoint").get(
        pk=delivery_id
    )
    if not claimed:
        return delivery
    alert, endpoint = delivery.alert, delivery.endpoint
    body = json.dumps(
        {
            "id": alert.pk,
            "kind": alert.kind,
            "deployment": alert.deployment.name,
            "message": alert.message,
            "created_at": alert.created_at,
            "payload": alert.payload,
        },
        cls=DjangoJSONEncoder,
    ).encode()
    timestamp = int(time.time())
    status_code: int | None = None
    error = ""
    try:
        addresses = webhook_url_check(endpoint.url)
        url, pin_headers, extensions = (
            _pinned(endpoint.url, addresses[0]) if addresses else (endpoint.url, {}, {})
        )
        with httpx.Client(
            timeout=settings.MODELYARD_WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False
        ) as http:
            response = http.post(
                url,
                content=body,
                extensions=extensions,
                headers={
                    **pin_headers,
                    "Content-Type": "application/json",
                    "User-Agent": "Modelyard-Webhook/1",
                    "X-Modelyard-Event": alert.kind,
                    "X-Modelyard-Delivery": str(delivery.pk),
                    "X-Modelyard-Timestamp": str(timestamp),
                    "X-Modelyard-Signature": webhook_sign(endpoint.secret, timestamp, body),
                },
            )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
    except InvalidInput as exc:
        error = f"target refused: {exc.message}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    attempts = delivery.attempts + 1
    now = timezone.now()
    entry = {"at": now.isoformat(), "attempt": attempts, "status": status_code, "error": error}
    if not error:
        state, next_at = DeliveryState.SUCCEEDED, None
    elif attempts >= settings.MODELYARD_WEBHOOK_MAX_ATTEMPTS:
        state, next_at = DeliveryState.FAILED, None
    else:
        state, next_at = DeliveryState.PENDING, now + _backoff(attempts)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state=state,
        attempts=attempts,
        next_attempt_at=next_at,
        last_status_code=status_code,
        last_error=error,
        log=[*delivery.log, entry],
        delivered_at=now if state == DeliveryState.SUCCEEDED else None,
    )
    delivery.refresh_from_db()
    return delivery


def webhook_deliveries_due(*, now: datetime | None = None) -> list[int]:
    return list(
        WebhookDelivery.objects.filter(
            state=DeliveryState.PENDING, next_attempt_at__lte=now or timezone.now()
        ).values_list("id", flat=True)[:500]
    )
