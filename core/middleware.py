from __future__ import annotations

import time

from django.conf import settings

from core.logging import request_id_from_header, request_id_set
from core.metrics import HTTP_LATENCY, HTTP_REQUESTS, KNOWN_METHODS


class RequestIdMiddleware:
    """Give each request an id: on the response (X-Request-ID) and in every log record.

    A well-formed X-Request-ID from the client or a proxy is kept so one id follows a
    request across services; anything else is replaced, never echoed.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_from_header(request.META.get(settings.MODELYARD_REQUEST_ID_HEADER))
        request.request_id = request_id
        # Not reset on the way out: Django logs 4xx/5xx responses after the middleware
        # chain returns; the id is cleared when the response is closed (request_finished).
        request_id_set(request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class PrometheusMiddleware:
    """Count and time every request by method, URL name (not path) and status."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in KNOWN_METHODS else "other"
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "unnamed") if match is not None else "unmatched"
        HTTP_LATENCY.labels(method, view).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(method, view, str(response.status_code)).inc()
        return response


class AuditViaMiddleware:
    """Mark session-authenticated users as acting "web" for the audit log.

    API token authentication (later, in DRF) overrides it with "api:<token name>"; code
    that runs outside a request (shell, seed, tasks) leaves it unset.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            user.audit_via = "web"
        return self.get_response(request)
