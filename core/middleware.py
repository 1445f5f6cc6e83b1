from __future__ import annotations

import logging
import sys
import time

from django.conf import settings
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.api.exceptions import error_body, unavailable_headers
from core.errors import ServiceUnavailable
from core.infrastructure import infrastructure_error
from core.logging import request_id_from_header, request_id_set
from core.metrics import HTTP_LATENCY, HTTP_REQUESTS, KNOWN_METHODS
from core.postgresql.base import database_wait_budget


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


class DatabaseDeadlineMiddleware:
    """Bound how long a request waits for PostgreSQL in all (DATABASE_REQUEST_WAIT_SECONDS):
    a stalled server answers 503 in seconds instead of holding the request for as long as
    it stalls (core/postgresql/base.py says why the server's own timeouts cannot)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        with database_wait_budget(settings.DATABASE_REQUEST_WAIT_SECONDS):
            return self.get_response(request)


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


logger = logging.getLogger(__name__)

_UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Temporarily unavailable</title></head>
<body><h1>Temporarily unavailable</h1>
<p>Modelyard cannot reach one of its services right now. Please try again in a moment.</p>
</body></html>
"""


def unavailable_response(request: HttpRequest, error: ServiceUnavailable) -> HttpResponse:
    """The 503 for ``error``: the API's error body under /api/, a plain page elsewhere.

    Built without templates, sessions or the database: any of them may be what is down.
    """
    response: HttpResponse
    if request.path.startswith("/api/"):
        body = error_body(error.code, error.message, error.details)
        response = JsonResponse(body, status=error.status)
    else:
        response = HttpResponse(_UNAVAILABLE_PAGE, status=error.status)
    for name, value in unavailable_headers().items():
        response[name] = value
    return response


def _infrastructure_error_propagate(sender, request=None, **kwargs) -> None:
    """Re-raise an infrastructure error that a middleware raised, up to
    InfrastructureErrorMiddleware.

    Django turns an exception raised in a middleware into a 500 response right where it is
    raised (and, under DEBUG, renders the debug page: with the database down, each of its
    lazy lookups waited out the connect timeout again, 20 s in all). This receiver runs
    first, inside Django's handling; an exception raised here leaves it (Signal.send does
    not swallow it), so the error reaches the middleware as an exception, layer by layer.
    Only for requests that passed through the middleware: nothing else would catch it.
    """
    exc = sys.exc_info()[1]
    if request is None or exc is None or not getattr(request, "infrastructure_guarded", False):
        return
    error = infrastructure_error(exc)
    if error is not None:
        if error is not exc:
            logger.warning("infrastructure error: %s", error.code, exc_info=exc)
        raise error from exc


got_request_exception.connect(
    _infrastructure_error_propagate, dispatch_uid="core.infrastructure_error_propagate"
)


class InfrastructureErrorMiddleware:
    """Infrastructure errors answer 503 + Retry-After, never Django's 500 (or debug) page.

    A view's exception is answered in process_exception; one raised by an inner middleware
    (the session or user lookup with the database down) is brought here by the receiver
    above. Hence this sits outside every middleware that may touch the database, Redis or
    storage.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request.infrastructure_guarded = True
        try:
            return self.get_response(request)
        except ServiceUnavailable as error:
            return unavailable_response(request, error)

    def process_exception(self, request, exception):
        error = infrastructure_error(exception)
        if error is None:
            return None
        logger.warning("infrastructure error: %s", error.code, exc_info=exception)
        return unavailable_response(request, error)
