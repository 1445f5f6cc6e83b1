"""The Celery app: queues are declared here; each task states its own policy beside it."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("modelyard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [
    Queue(name) for name in ("default", "builds", "rollouts", "batch", "monitoring")
]
# Which queue each task runs on (Celery 6 drops the per-task `queue` attribute). Unlisted
# tasks go to `default`. Builds are slow and write the BentoML store: their own queue lets
# it run at concurrency 1; batch chunks would otherwise starve rollouts.
app.conf.task_routes = {
    "registry.*": {"queue": "default"},
    "deployments.build_run": {"queue": "builds"},
    "deployments.rollout_advance": {"queue": "rollouts"},
    "deployments.reconcile": {"queue": "rollouts"},
    "batch.*": {"queue": "batch"},
    "monitoring.*": {"queue": "monitoring"},
}
app.autodiscover_tasks()
