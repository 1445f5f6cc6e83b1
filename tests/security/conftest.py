"""Shared helpers of the security suite: URL conf enumeration, clients per role, lockouts on.

Every test here tries a real attack against the real application (Django test client or
real processes, real files, real sockets); see README.md for the classes and case counts.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

from accounts.choices import Role

# Fixtures of other suites this one reuses: a built Bento with approved versions (batch
# inputs), and real gateway and upstream processes (gateway keys).
from tests.batch.conftest import batch_bentos, batch_setup  # noqa: F401
from tests.gateway.conftest import (  # noqa: F401
    log_dir,
    redis_client,
    redis_url,
    session_names,
    start_gateway,
    start_upstream,
)

# Routes anyone may reach, with the reason. Everything else in the URL conf must refuse an
# anonymous client. A new public route has to be added here on purpose.
PUBLIC_ROUTES: dict[str, str] = {
    "healthz": "liveness probe for load balancers; answers {'status': 'ok'} only",
    "readyz": "readiness probe; says whether the database and Redis answer, nothing more",
    "admin:login": "the admin sign-in form",
    "admin:logout": "signing out needs no session",
    "frontend:login": "the sign-in form",
    "frontend:logout": "signing out needs no session (POST, CSRF-checked)",
    "favicon": "a redirect to the static icon every browser asks for; static files are public",
}

_SAMPLE = {"int": "1", "str": "x", "slug": "x", "path": "x", "uuid": str(uuid.UUID(int=1))}
_ROUTE_PARAM = re.compile(r"<(?:(?P<conv>[^>:]+):)?(?P<name>[^>]+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>(?P<body>(?:[^()]|\([^()]*\))*)\)")


@dataclass(frozen=True)
class Route:
    name: str  # namespace:name, or the pattern when unnamed
    path: str  # a concrete path with sample arguments
    callback: object


def _concrete(pattern) -> str:
    if isinstance(pattern, RoutePattern):
        return _ROUTE_PARAM.sub(lambda m: _SAMPLE.get(m["conv"] or "str", "x"), str(pattern))
    regex = str(pattern)

    def group(match: re.Match) -> str:
        body = match["body"]
        # An alternation of literals (admin's app_label): take its first choice.
        if re.fullmatch(r"[\w|-]+", body):
            return body.split("|")[0]
        return "1" if ".*" not in body else ""

    regex = _REGEX_GROUP.sub(group, regex)
    return regex.lstrip("^").rstrip("$").replace("\\", "")


def url_routes() -> list[Route]:
    """Every route of the running URL conf with sample arguments (picked up automatically,
    including pages added after this suite was written)."""
    routes: list[Route] = []

    def walk(patterns, prefix: str, namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                ns = namespace
                if entry.namespace:
                    ns = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
                walk(entry.url_patterns, prefix + _concrete(entry.pattern), ns)
            elif isinstance(entry, URLPattern):
                name = entry.name or str(entry.pattern)
                full = f"{namespace}:{name}" if namespace and entry.name else name
                routes.append(Route(full, "/" + prefix + _concrete(entry.pattern), entry.callback))

    walk(get_resolver().url_patterns, "", "")
    return routes


@pytest.fixture
def admin_user(make_user):
    return make_user(Role.ADMIN, "ada")


@pytest.fixture
def login_client():
    """A session client of the given user, CSRF checks on (as for a browser)."""

    def make(user) -> Client:
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    return make


@pytest.fixture
def axes_on(settings):
    """django-axes as in production (the test settings turn it off for client.login())."""
    settings.AXES_ENABLED = True
    from axes.models import AccessAttempt

    AccessAttempt.objects.all().delete()
    yield settings
