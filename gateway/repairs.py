"""Repair requests: tell the platform at once that a replica is dead (gateway.replica_reports).

The message is the Celery task :data:`~gateway.replica_reports.REPAIR_TASK` on queue
:data:`~gateway.replica_reports.REPAIR_QUEUE` with kwargs ``deployment``, ``upstream``,
``reason``, sent through Celery's own ``send_task`` (a Celery app of our own with only a broker,
so the gateway still imports no Django): hand-writing Celery's message envelope into Redis
would copy a format Celery owns. ``send_task`` blocks on the broker, so it runs on one thread
of its own (in order, one at a time) with short socket timeouts and no publish retries; the
event loop only hands it the call. At most one request per replica per
:data:`~gateway.replica_reports.REPAIR_MIN_INTERVAL_S` leaves this process, however many
requests see the replica fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from celery import Celery

from gateway.replica_reports import REPAIR_MIN_INTERVAL_S, REPAIR_QUEUE, REPAIR_TASK

logger = logging.getLogger("modelyard.gateway")


class RepairRequests:
    """Sends repair requests off the event loop, rate-limited per (deployment, replica)."""

    def __init__(
        self,
        broker_url: str,
        *,
        timeout_s: float,
        min_interval_s: float = REPAIR_MIN_INTERVAL_S,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.sent = 0  # requests the broker took (for /healthz and the tests)
        self.failed = 0
        self._last: dict[tuple[str, str], float] = {}
        self._celery = Celery("modelyard-gateway", broker=broker_url, set_as_current=False)
        self._celery.conf.update(
            broker_connection_timeout=timeout_s,
            broker_connection_retry=False,
            broker_transport_options={
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
            },
            # One attempt: the next failure of the replica (or the next failed probe) asks
            # again after min_interval_s, and a blocked thread would delay later requests.
            task_publish_retry=False,
            task_serializer="json",
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-repairs")

    def request(self, deployment: str, upstream: str, reason: str) -> bool:
        """Ask for a repair unless one for this replica left less than the interval ago."""
        now = time.monotonic()
        key = (deployment, upstream)
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval_s:
            return False
        if len(self._last) > 4096:  # replicas come and go with rollouts
            self._last.clear()
        self._last[key] = now
        kwargs = {"deployment": deployment, "upstream": upstream, "reason": reason}
        future = self._executor.submit(self._send, kwargs)
        future.add_done_callback(self._sent)
        return True

    def _send(self, kwargs: dict[str, str]) -> dict[str, str]:
        self._celery.send_task(REPAIR_TASK, kwargs=kwargs, queue=REPAIR_QUEUE)
        return kwargs

    def _sent(self, future: Future[dict[str, str]]) -> None:
        # Runs on the sender thread: only counters and log lines here.
        exc = future.exception()
        if exc is None:
            self.sent += 1
            kwargs = future.result()
            logger.warning(
                "asked the platform to repair replica %s of %r (%s)",
                kwargs["upstream"],
                kwargs["deployment"],
                kwargs["reason"],
            )
        else:
            self.failed += 1
            logger.error("repair request not sent (broker unreachable?): %s", exc)

    async def close(self) -> None:
        """Let requests already handed over finish (bounded by their socket timeouts)."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._celery.close()
