"""What the gateway tells the platform about replicas: their load, and that one is dead.

The contract between the gateway (writer) and the deployment services (reader), like
``gateway.routes``; it needs nothing but redis-py so either side imports it.

``modelyard:inflight:<deployment>`` (hash, expires ``INFLIGHT_TTL_S`` after the last report)
    field = a replica's base URL (one of the route's ``upstreams``), value = JSON
    ``{"inflight": <mean requests in flight over the report interval>, "peak": <max>,
    "at": <unix time of the report>}``. Each gateway adds its own share: with several gateways
    the value is the sum of their reports (HINCRBYFLOAT of a per-interval mean would mix
    intervals, so each gateway writes its own field suffix ``|<gateway id>``). The autoscaler
    sums a replica's fields whose ``at`` is recent.

Repair requests
    When a connection to a replica is refused or reset, the gateway sends the Celery task
    :data:`REPAIR_TASK` (kwargs ``deployment``, ``upstream``, ``reason``) on queue
    :data:`REPAIR_QUEUE` at once, at most once per replica per :data:`REPAIR_MIN_INTERVAL_S`,
    instead of waiting for the reconcile sweep.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    import redis.asyncio

INFLIGHT_PREFIX = "modelyard:inflight:"
INFLIGHT_TTL_S = 30
# A report older than this is ignored (the gateway that wrote it stopped reporting).
INFLIGHT_FRESH_S = 10.0

REPAIR_TASK = "deployments.upstream_repair"
REPAIR_QUEUE = "rollouts"
REPAIR_MIN_INTERVAL_S = 5.0


def inflight_key(deployment: str) -> str:
    return f"{INFLIGHT_PREFIX}{deployment}"


async def inflight_report_async(
    client: redis.asyncio.Redis,
    deployment: str,
    gateway_id: str,
    loads: dict[str, tuple[float, int]],
) -> None:
    """Store one gateway's mean and peak in-flight count per replica of ``deployment``."""
    if not loads:
        return
    now = time.time()
    # Keys typed Any: redis-py's mapping type is invariant in its (wide) key union.
    fields: dict[Any, str] = {
        f"{upstream}|{gateway_id}": json.dumps({"inflight": mean, "peak": peak, "at": now})
        for upstream, (mean, peak) in loads.items()
    }
    key = inflight_key(deployment)
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, INFLIGHT_TTL_S)
        await pipe.execute()


def inflight_read(client: redis.Redis, deployment: str) -> dict[str, float]:
    """Mean requests in flight per replica URL, summed over the gateways reporting recently."""
    oldest = time.time() - INFLIGHT_FRESH_S
    loads: dict[str, float] = {}
    for field, raw in client.hgetall(inflight_key(deployment)).items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        upstream = name.rpartition("|")[0] or name
        try:
            report = json.loads(raw)
            mean, at = float(report["inflight"]), float(report["at"])
        except (ValueError, TypeError, KeyError):
            continue
        if at >= oldest:
            loads[upstream] = loads.get(upstream, 0.0) + mean
    return loads
