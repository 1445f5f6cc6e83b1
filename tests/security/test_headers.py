"""Browser-side defences: the CSP (django-csp) and framing/sniffing headers on every kind of
response, HTTPS-only cookies and HSTS with the production settings, and pages that the
strict CSP does not break (no inline scripts or event handlers)."""

from __future__ import annotations

import importlib
import re
import secrets
import sys

import pytest
from django.test import Client

from accounts.choices import Role
from tests.security.conftest import url_routes

pytestmark = pytest.mark.django_db

EXPECTED_CSP = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "frame-ancestors 'none'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
]


def _csp(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {part.strip().split(" ", 1)[0]: part.strip() for part in header.split(";")}


@pytest.mark.parametrize(
    "path", ["/login/", "/healthz", "/api/v1/models/", "/admin/login/", "/no-such-page/", "/"]
)
def test_every_kind_of_response_carries_the_security_headers(path):
    response = Client().get(path)
    directives = _csp(response)
    for expected in EXPECTED_CSP:
        assert directives[expected.split(" ", 1)[0]] == expected, response[
            "Content-Security-Policy"
        ]
    assert "unsafe-inline" not in directives["script-src"]
    assert "unsafe-eval" not in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


@pytest.fixture
def production(settings, monkeypatch):
    """The security settings config.settings.production really computes, applied here."""
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "testserver")
    monkeypatch.setenv("DJANGO_SECRET_KEY", secrets.token_urlsafe(64))
    for name in ("DJANGO_DEBUG", "DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SECURE_HSTS_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    saved = {name: sys.modules.pop(name, None) for name in ("config.settings.base",)}
    sys.modules.pop("config.settings.production", None)
    try:
        module = importlib.import_module("config.settings.production")
    finally:
        sys.modules.pop("config.settings.production", None)
        for name, value in saved.items():
            sys.modules[name] = value
    for name in dir(module):
        if name.startswith(("SECURE_", "SESSION_COOKIE_", "CSRF_COOKIE_")) or name in {
            "X_FRAME_OPTIONS",
            "CONTENT_SECURITY_POLICY",
        }:
            setattr(settings, name, getattr(module, name))
    return settings


def test_production_redirects_plain_http_and_sends_hsts(production):
    plain = Client().get("/login/")
    assert plain.status_code == 301 and plain["Location"] == "https://testserver/login/"
    secure = Client().get("/login/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    # Behind the TLS-terminating proxy, its X-Forwarded-Proto marks the request secure.
    proxied = Client().get("/login/", HTTP_X_FORWARDED_PROTO="https")
    assert proxied.status_code == 200 and "Strict-Transport-Security" in proxied


def test_production_cookies_are_secure_httponly_and_same_site(production, make_user):
    user = make_user(Role.VIEWER, "vic")
    user.set_password("a-long-password-1")
    user.save()
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/", secure=True)
    csrf = client.cookies["csrftoken"]
    assert csrf["secure"] and csrf["samesite"] == "Lax"
    response = client.post(
        "/login/",
        {
            "username": "vic",
            "password": "a-long-password-1",
            "csrfmiddlewaretoken": page.context["csrf_token"],
        },
        secure=True,
        HTTP_REFERER="https://testserver/login/",
    )
    assert response.status_code == 302
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"


_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)


def test_pages_need_no_inline_script_so_the_strict_csp_breaks_nothing(make_user):
    client = Client()
    client.force_login(make_user(Role.ADMIN, "ada"))
    checked = []
    for route in url_routes():
        if not (route.name.startswith("frontend:") or route.name in {"api-docs", "admin:index"}):
            continue
        response = client.get(route.path)
        if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
            continue
        html = response.content.decode()
        assert not _INLINE_SCRIPT.search(html), (route.path, _INLINE_SCRIPT.search(html))
        assert not _HANDLER.search(html), (route.path, _HANDLER.search(html))
        checked.append(route.path)
    assert "/api/docs/" in checked and "/" in checked
    # The docs page's script is a file of its own (served from 'self').
    docs_script = client.get("/api/docs/?script=")
    assert docs_script.status_code == 200
    assert docs_script["Content-Type"].startswith("application/javascript")
