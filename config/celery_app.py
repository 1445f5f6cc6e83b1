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
    # The gateway's repair requests (gateway.replica_reports.REPAIR_QUEUE) and scaling start
    # and stop slot servers: beside the rollouts that do the same.
    "deployments.upstream_repair": {"queue": "rollouts"},
    "deployments.autoscale": {"queue": "rollouts"},
    "deployments.slot_release": {"queue": "rollouts"},
    "batch.*": {"queue": "batch"},
    "monitoring.*": {"queue": "monitoring"},
}
# Broker connection: a Redis restart must not end the worker. Celery retries a lost broker
# connection, but by default only 100 times (a Redis down for a few minutes ended the worker,
# leaving recovery to the process supervisor) and, from Celery 6, not at start-up at all;
# retrying forever keeps one worker process through any outage (proved by
# tests/deployments/test_faults.py::test_redis_restart_loses_nothing, which never restarts it).
app.conf.broker_connection_retry = True
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_connection_max_retries = None
# Tasks already running when the connection drops keep running: every task here is idempotent
# and acks late, so at worst a redelivered copy repeats harmless work, whereas cancelling would
# throw away a half-done build or slot start on every Redis blip.
app.conf.worker_cancel_long_running_tasks_on_connection_loss = False


def _kombu_redis_closed_transport_is_a_connection_error() -> None:
    """Work around a kombu/Celery bug that ends the worker when Redis restarts mid-task.

    On a lost broker connection Celery (5.7) first ``collect()``s the connection, which sets
    the kombu transport's ``client`` to None, then closes it. Closing restores the unacked
    (acks_late, in-flight) messages, which needs a Redis client; building one reads
    ``transport.client.hostname`` and raises AttributeError. Celery only ignores connection
    errors there, so the AttributeError became "Unrecoverable error" and the worker exited
    (seen in tests/deployments/test_faults.py::test_redis_restart_loses_nothing while a build
    task was running; kombu issues #582/#970 are the same class). Raising redis-py's
    ConnectionError instead lets Celery treat it as the connection loss it is: it skips the
    restore (the messages stay in Redis's unacked set, which kombu restores after the
    visibility timeout, and a Redis that lost its data lost them anyway -- the reconcile
    sweep resumes such rollouts) and reconnects.
    """
    import redis
    from kombu.transport import redis as kombu_redis

    get_pool = kombu_redis.Channel._get_pool
    if getattr(get_pool, "_modelyard_patched", False):
        return

    def _get_pool(self: kombu_redis.Channel, asynchronous: bool = False) -> redis.ConnectionPool:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection is already closed; not reopening it to clean up"
            )
        return get_pool(self, asynchronous=asynchronous)

    _get_pool._modelyard_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._get_pool = _get_pool  # type: ignore[method-assign]


_kombu_redis_closed_transport_is_a_connection_error()
app.autodiscover_tasks()
