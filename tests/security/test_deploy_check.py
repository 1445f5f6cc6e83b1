"""Production settings: `manage.py check --deploy` reports nothing with the production
environment set, and the settings that matter took effect (run in fresh processes, as a
server would start)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _production_env(**overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "MODELYARD_")) or key == "MODELYARD_TEST_MEDIA_ROOT"
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
            "DJANGO_ALLOWED_HOSTS": "modelyard.example.com",
            "DJANGO_CSRF_TRUSTED_ORIGINS": "https://modelyard.example.com",
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "REDIS_URL": os.environ["REDIS_URL"],
            "MODELYARD_METRICS_TOKEN": secrets.token_urlsafe(32),
        }
    )
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=_production_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_no_issues():
    result = _manage(
        "check", "--deploy", "--settings=config.settings.production", "--fail-level", "DEBUG"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_is_not_blind():
    """The control case: a weak (long enough, but 2 distinct characters) secret key is
    reported, so "no issues" above means something."""
    result = _manage(
        "check",
        "--deploy",
        "--settings=config.settings.production",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY="ab" * 30,
    )
    assert result.returncode != 0
    assert "security.W009" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG must be false"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS is required"),
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY must not be empty"),
        ({"DJANGO_SECRET_KEY": "short-but-random-Zq81"}, "DJANGO_SECRET_KEY must be 50+"),
        (
            {"DJANGO_SECRET_KEY": "replace-me-with-a-long-random-string" + "x" * 20},
            "not a placeholder",
        ),
        ({"DJANGO_SECRET_KEY": "django-insecure-" + "k" * 50}, "not a placeholder"),
        ({"DJANGO_SECRET_KEY": "test-only-not-secret" + "0" * 40}, "not a placeholder"),
        ({"MODELYARD_LOG_FORMAT": "xml"}, "MODELYARD_LOG_FORMAT"),
    ],
)
def test_production_refuses_to_start_misconfigured(env, message):
    result = _manage("check", "--settings=config.settings.production", **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_security_settings_took_effect_in_production():
    code = (
        "import json; from django.conf import settings as s; print(json.dumps({"
        "'debug': s.DEBUG, 'session_secure': s.SESSION_COOKIE_SECURE,"
        "'csrf_secure': s.CSRF_COOKIE_SECURE, 'session_httponly': s.SESSION_COOKIE_HTTPONLY,"
        "'hsts': s.SECURE_HSTS_SECONDS, 'hsts_sub': s.SECURE_HSTS_INCLUDE_SUBDOMAINS,"
        "'ssl_redirect': s.SECURE_SSL_REDIRECT, 'frame': s.X_FRAME_OPTIONS,"
        "'nosniff': s.SECURE_CONTENT_TYPE_NOSNIFF, 'csp': s.CONTENT_SECURITY_POLICY,"
        "'axes': getattr(s, 'AXES_ENABLED', True), 'backends': s.AUTHENTICATION_BACKENDS,"
        "'middleware': s.MIDDLEWARE, 'token_rate': s.MODELYARD_TOKEN_AUTH_FAILURE_RATE,"
        "'log_format': s.MODELYARD_LOG_FORMAT}, default=str))"
    )
    result = _manage("shell", "-c", code)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["debug"] is False
    assert values["session_secure"] and values["csrf_secure"] and values["session_httponly"]
    assert values["hsts"] >= 31_536_000 and values["hsts_sub"] and values["ssl_redirect"]
    assert values["frame"] == "DENY" and values["nosniff"]
    directives = values["csp"]["DIRECTIVES"]
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'", "'unsafe-inline'"]
    assert directives["img-src"] == ["'self'", "data:"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert values["axes"] is True
    assert values["backends"][0] == "axes.backends.AxesStandaloneBackend"
    assert "csp.middleware.CSPMiddleware" in values["middleware"]
    assert values["middleware"][0] == "core.middleware.RequestIdMiddleware"
    assert values["token_rate"] == "30/min"
    assert values["log_format"] == "json"
