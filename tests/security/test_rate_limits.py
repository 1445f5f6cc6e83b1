"""Guessing is slow: failed logins lock the (user name, address) pair out (django-axes),
failed API token authentications are throttled per address. Spoofed X-Forwarded-For
headers do not give an attacker fresh addresses."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from accounts.choices import Role
from accounts.services import token_create

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-password-1"


@pytest.fixture
def victim(make_user):
    user = make_user(Role.ADMIN, "victim")
    user.set_password(PASSWORD)
    user.save()
    return user


def _login(client: Client, path: str, password: str, **extra):
    return client.post(path, {"username": "victim", "password": password}, **extra)


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_login_is_locked_after_repeated_failures_even_for_the_right_password(path, victim, axes_on):
    client = Client()
    limit = axes_on.AXES_FAILURE_LIMIT
    for attempt in range(limit - 1):
        response = _login(client, path, f"wrong-{attempt}")
        assert response.status_code == 200  # the form again, with an error
    response = _login(client, path, "wrong-last")
    assert response.status_code == 429
    locked = _login(client, path, PASSWORD)
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Spoofing the client address in a header does not unlock it.
    spoofed = _login(Client(), path, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert spoofed.status_code == 429


def test_the_lockout_is_per_address_so_an_attacker_cannot_lock_the_owner_out(victim, axes_on):
    attacker = Client(REMOTE_ADDR="198.51.100.7")
    for attempt in range(axes_on.AXES_FAILURE_LIMIT):
        _login(attacker, "/login/", f"wrong-{attempt}")
    assert _login(attacker, "/login/", PASSWORD).status_code == 429
    owner = Client(REMOTE_ADDR="192.0.2.10")
    response = _login(owner, "/login/", PASSWORD)
    assert response.status_code == 302
    assert owner.session["_auth_user_id"] == str(victim.pk)


def test_a_successful_login_resets_the_count(victim, axes_on):
    client = Client()
    for round_ in range(3):
        for attempt in range(axes_on.AXES_FAILURE_LIMIT - 1):
            assert _login(client, "/login/", f"wrong-{round_}-{attempt}").status_code == 200
        assert _login(client, "/login/", PASSWORD).status_code == 302
        client.logout()


def test_production_lockout_settings():
    from django.conf import settings

    assert settings.AUTHENTICATION_BACKENDS[0] == "axes.backends.AxesStandaloneBackend"
    assert settings.MIDDLEWARE[-1] == "axes.middleware.AxesMiddleware"
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]
    assert 1 <= settings.AXES_FAILURE_LIMIT <= 10


# --- API tokens -----------------------------------------------------------------------------


@pytest.fixture
def token_rate(settings):
    """The production rate (the test settings raise it for the rest of the suite)."""
    settings.MODELYARD_TOKEN_AUTH_FAILURE_RATE = "30/min"
    for address in ("127.0.0.1", "192.0.2.10", "198.51.100.7"):
        cache.delete(f"throttle_token_auth_failures_{address}")
    yield 30
    for address in ("127.0.0.1", "192.0.2.10", "198.51.100.7"):
        cache.delete(f"throttle_token_auth_failures_{address}")


def _api(key: str, address: str = "198.51.100.7", **headers) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}", **headers)
    return client


def test_failed_token_authentications_are_throttled_per_address(token_rate, make_user):
    good = token_create(user=make_user(Role.VIEWER, "ci"), name="ci").key
    for attempt in range(token_rate):
        response = _api(f"my_{attempt:012x}.guess").get("/api/v1/models/")
        assert response.status_code == 401
    throttled = _api("my_000000000000.guess").get("/api/v1/models/")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0
    assert throttled.json()["error"]["code"] == "throttled"
    # Even the right key is refused from that address while it lasts (a lucky guess
    # cannot be confirmed), and a spoofed X-Forwarded-For does not help.
    assert _api(good).get("/api/v1/models/").status_code == 429
    spoofed = _api(good, HTTP_X_FORWARDED_FOR="203.0.113.1").get("/api/v1/models/")
    assert spoofed.status_code == 429
    # Another address is unaffected.
    assert _api(good, address="192.0.2.10").get("/api/v1/models/").status_code == 200


def test_successful_token_use_is_never_throttled(token_rate, make_user):
    good = token_create(user=make_user(Role.VIEWER, "ci"), name="ci").key
    api = _api(good)
    for _ in range(token_rate + 10):
        assert api.get("/api/v1/models/").status_code == 200


def test_token_auth_fails_open_when_the_cache_is_down(token_rate, make_user):
    """Redis unreachable: the throttle is skipped (logged), the API keeps answering."""
    from django.test import override_settings

    good = token_create(user=make_user(Role.VIEWER, "ci"), name="ci").key
    down = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        }
    }
    with override_settings(CACHES=down):
        assert _api(good).get("/api/v1/models/").status_code == 200
        assert _api("my_000000000000.guess").get("/api/v1/models/").status_code == 401
