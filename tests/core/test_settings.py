"""The settings that matter took effect (a misspelt CELERY_ key is silently ignored)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from config.celery_app import app
from config.env import env_bool, env_int, env_secret


def test_celery_policy_settings_reached_the_app():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_url == settings.REDIS_URL
    assert {q.name for q in app.conf.task_queues} == {
        "default",
        "builds",
        "rollouts",
        "batch",
        "monitoring",
    }
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]


def test_validation_task_declares_its_policy():
    from registry.tasks import version_validate_task

    assert app.amqp.router.route({}, version_validate_task.name)["queue"].name == "default"
    assert version_validate_task.acks_late is True
    assert version_validate_task.time_limit and version_validate_task.soft_time_limit


def test_database_is_postgresql_and_auth_model_is_ours():
    assert settings.DATABASES["default"]["ENGINE"] == "core.postgresql"  # with deadlines
    assert settings.AUTH_USER_MODEL == "accounts.User"
    assert settings.REST_FRAMEWORK["EXCEPTION_HANDLER"] == "core.api.exceptions.exception_handler"


def test_env_helpers_refuse_bad_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "yes please")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env_bool("X_BOOL", False)
    monkeypatch.setenv("X_INT", "12a")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("X_INT", 1)
    monkeypatch.delenv("X_SECRET", raising=False)
    with pytest.raises(ImproperlyConfigured, match="required"):
        env_secret("X_SECRET")


def test_env_secret_reads_file(monkeypatch, tmp_path):
    secret = tmp_path / "s"
    secret.write_text("from-a-file\n")
    monkeypatch.delenv("X_SECRET", raising=False)
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env_secret("X_SECRET") == "from-a-file"


def test_production_settings_refuse_debug(monkeypatch):
    import importlib
    import sys

    monkeypatch.setenv("DJANGO_DEBUG", "true")
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "example.com")
    sys.modules.pop("config.settings.production", None)
    sys.modules.pop("config.settings.base", None)
    try:
        with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG"):
            importlib.import_module("config.settings.production")
    finally:
        sys.modules.pop("config.settings.production", None)
        sys.modules.pop("config.settings.base", None)
