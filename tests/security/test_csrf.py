"""CSRF on every session-authenticated form and API write: a signed-in browser tricked into
posting (no token, a wrong token, a token without its cookie) is refused."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from django.utils.crypto import get_random_string

from accounts.choices import Role
from tests.security.conftest import url_routes

pytestmark = pytest.mark.django_db

PAGES = [
    route
    for route in url_routes()
    if route.name.startswith("frontend:") or route.name in {"admin:login", "admin:logout"}
]
API_WRITES = ["/api/v1/models/", "/api/v1/tokens/", "/api/v1/webhooks/", "/api/v1/batch-jobs/"]


def _forged(client: Client, path: str, how: str):
    if how == "no-token":
        return client.post(path, {"name": "x"})
    if how == "wrong-token":
        client.cookies[settings.CSRF_COOKIE_NAME] = get_random_string(32)
        return client.post(path, {"csrfmiddlewaretoken": get_random_string(32), "name": "x"})
    # A token an attacker has (e.g. from their own session), without the victim's cookie.
    return client.post(path, {"csrfmiddlewaretoken": get_random_string(32)})


@pytest.mark.parametrize("how", ["no-token", "wrong-token", "token-without-cookie"])
@pytest.mark.parametrize("route", PAGES, ids=lambda route: route.name)
def test_session_forms_refuse_forged_posts(route, how, make_user):
    from core.models import AuditEvent

    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user(Role.ADMIN, "ada"))
    events = AuditEvent.objects.count()
    response = _forged(client, route.path, how)
    assert response.status_code == 403, (route.path, response.status_code)
    assert b"CSRF" in response.content
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize("path", API_WRITES)
def test_api_writes_with_a_session_cookie_need_the_csrf_token(path, make_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user(Role.ADMIN, "ada"))
    response = client.post(path, {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]


def test_login_form_needs_the_csrf_token(make_user):
    """Login CSRF: an attacker must not sign a victim into the attacker's account."""
    user = make_user(Role.VIEWER, "vic")
    user.set_password("a-long-password-1")
    user.save()
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "vic", "password": "a-long-password-1"})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_a_real_form_post_with_its_token_works(make_user):
    """The control case: the same client with the page's token is accepted."""
    user = make_user(Role.VIEWER, "vic")
    user.set_password("a-long-password-1")
    user.save()
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/")
    token = page.context["csrf_token"]
    response = client.post(
        "/login/",
        {"username": "vic", "password": "a-long-password-1", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_csrf_and_session_cookies_are_not_readable_cross_site():
    assert settings.SESSION_COOKIE_HTTPONLY is True
    assert settings.SESSION_COOKIE_SAMESITE == "Lax"
    assert settings.CSRF_COOKIE_SAMESITE == "Lax"
