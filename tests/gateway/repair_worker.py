"""A real Celery worker app standing in for the platform's side of repair requests.

``celery -A tests.gateway.repair_worker worker -Q rollouts`` runs a task of the platform's name
(``deployments.upstream_repair``) that records each request it gets in the Redis list
``repairs_key(deployment)``, so a test sees exactly what reached the platform -- sent by the
gateway through the broker, taken off the queue and run by a Celery worker, like the real one.
No Django here: the gateway's messages must work for any Celery consumer of that task name.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from gateway.replica_reports import REPAIR_TASK

# Not the current app: pytest imports this module (for repairs_key) while collecting, and a
# current app of its own would take every @shared_task of the platform with it for the rest of
# the run (eager mode and the test broker set on config.celery_app would be ignored).
app = Celery("gateway-repair-test", broker=os.environ["REDIS_URL"], set_as_current=False)
app.conf.update(accept_content=["json"], worker_hijack_root_logger=False)


def repairs_key(deployment: str) -> str:
    return f"test:repairs:{deployment}"


# shared=False: Celery's default registers a task in every app, the platform's included.
@app.task(name=REPAIR_TASK, shared=False)
def upstream_repair(*, deployment: str, upstream: str, reason: str) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    record = {"upstream": upstream, "reason": reason, "at": time.time()}
    with client.pipeline() as pipe:
        pipe.rpush(repairs_key(deployment), json.dumps(record))
        pipe.expire(repairs_key(deployment), 300)  # deployments of other tests leave theirs
        pipe.execute()
    client.close()
