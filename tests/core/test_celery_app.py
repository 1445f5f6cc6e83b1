"""The platform's Celery app stays the current one whatever the suite imports.

A second app created with Celery's default (set_as_current=True) at import time took every
@shared_task of the platform with it: eager mode and the broker the tests set on
config.celery_app were then ignored by the tasks (a full run failed where files alone passed).
"""

import importlib

from celery import current_app

from config.celery_app import app


def test_importing_the_test_repair_worker_leaves_the_platform_app_current(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never contacted
    importlib.import_module("tests.gateway.repair_worker")
    from deployments.tasks import rollout_advance_task

    assert current_app._get_current_object() is app
    assert rollout_advance_task.app is app
