"""Liveness and readiness for load balancers and orchestrators (public, no data), and the
web process's Prometheus metrics (a scrape token or an admin session)."""

from __future__ import annotations

import hmac

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from core.metrics import metrics_exposition


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "message": message, "details": None}}, status=status
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition. Request counts per view tell an outsider what is in use, so
    it is not public: ``Authorization: Bearer <MODELYARD_METRICS_TOKEN>`` or an admin."""
    expected = settings.MODELYARD_METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented:
        if not expected or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
            return _error(401, "not_authenticated", "Invalid metrics token.")
    elif not request.user.is_authenticated:
        response = _error(
            401, "not_authenticated", "Metrics need a bearer token or an admin session."
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # Admins as accounts.permissions defines them (core cannot import accounts).
    elif not (request.user.is_superuser or getattr(request.user, "role", "") == "admin"):
        return _error(403, "forbidden", "Only admins may read the metrics.")
    body, content_type = metrics_exposition()
    return HttpResponse(body, content_type=content_type)
