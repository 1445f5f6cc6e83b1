"""``GET /metrics`` of the gateway: its request metrics in the Prometheus text format.

Computed at scrape time from :meth:`gateway.metrics.MetricsRecorder.totals` (the in-memory cells
the request path fills anyway), so serving Prometheus costs the request path nothing. Every
gateway process answers for itself: with ``--workers N`` a scrape reaches one worker, so scrape
each replica (or rely on the Redis roll-ups, which merge all of them).

Series (labels ``deployment``, ``version``; ``status`` where it says so):

=====================================================  =========  ===============================
name                                                   type       meaning
=====================================================  =========  ===============================
``modelyard_gateway_requests_total``                   counter    requests, per ``status`` code
``modelyard_gateway_errors_total``                     counter    requests the version failed
                                                                  (5xx of its server, 503
                                                                  upstream_unavailable, 504)
``modelyard_gateway_rows_total``                       counter    rows predicted
``modelyard_gateway_request_duration_seconds``         histogram  gateway-side latency, buckets
                                                                  in :data:`PROMETHEUS_BUCKETS_S`
``modelyard_gateway_unknown_deployment_requests_total``  counter  requests for no known deployment
``modelyard_gateway_routes``                           gauge      routes in the in-memory table
``modelyard_gateway_redis_up``                         gauge      1 while Redis answers
``modelyard_gateway_metrics_pending_requests``         gauge      recorded, not yet in Redis
``modelyard_gateway_metrics_dropped_cells_total``      counter    cells dropped in Redis outages
``modelyard_gateway_samples_written_total``            counter    payload samples written
``modelyard_gateway_upstream_inflight``                gauge      mean requests in flight per
                                                                  ``deployment``, ``upstream``
                                                                  (a replica's base URL) over
                                                                  the last report interval: the
                                                                  HPA's metric
``modelyard_gateway_upstream_inflight_peak``           gauge      the most at once, same interval
``modelyard_gateway_upstream_ejected``                 gauge      1 while a replica is left out
``modelyard_gateway_upstream_failures_total``          counter    connections to replicas that
                                                                  were refused, reset or cut
``modelyard_gateway_upstream_retries_total``           counter    requests sent to another replica
``modelyard_gateway_repair_requests_total``            counter    repair requests the broker took
=====================================================  =========  ===============================

The in-flight gauges are the numbers the autoscaler reads from Redis (``gateway.replica_reports``),
refreshed every ``MODELYARD_GATEWAY_INFLIGHT_REPORT_INTERVAL_S``; with several gateways, the
HPA sums them over the gateways' pods (``sum by (deployment, upstream)``).

The histogram's buckets are a coarse subset of the recorder's 148 fine ones: a fine bucket
counts under the first coarse bound at or above its upper bound, so a coarse bucket never
undercounts. With ``MODELYARD_GATEWAY_METRICS=0`` nothing is recorded and only the process
series (routes, Redis, samples) appear.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.metrics import BUCKET_BOUNDS_MS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from gateway.app import Gateway

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
PROMETHEUS_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Fine bucket index -> coarse bucket index (len(PROMETHEUS_BUCKETS_S) means +Inf).
_COARSE_OF_FINE: tuple[int, ...] = (
    *(bisect.bisect_left(PROMETHEUS_BUCKETS_S, bound / 1e3 - 1e-12) for bound in BUCKET_BOUNDS_MS),
    len(PROMETHEUS_BUCKETS_S),  # the fine overflow bucket (> 60 s)
)


class _GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        requests = CounterMetricFamily(
            "modelyard_gateway_requests",
            "Requests answered, by deployment, version and HTTP status.",
            labels=["deployment", "version", "status"],
        )
        errors = CounterMetricFamily(
            "modelyard_gateway_errors",
            "Requests the version failed (its server's 5xx, or 503/504 reaching it); "
            "client-caused answers are the 4xx of modelyard_gateway_requests_total.",
            labels=["deployment", "version"],
        )
        rows = CounterMetricFamily(
            "modelyard_gateway_rows", "Rows predicted.", labels=["deployment", "version"]
        )
        latency = HistogramMetricFamily(
            "modelyard_gateway_request_duration_seconds",
            "Latency of requests as the gateway measured it (its own work + the model server).",
            labels=["deployment", "version"],
        )
        per_version: dict[tuple[str, str], tuple[list[int], int, int, int, int]] = {}
        for (deployment, version, status), cell in sorted(gateway.metrics.totals().items()):
            labels = (deployment, str(version))
            requests.add_metric([*labels, str(status)], cell.count)
            coarse, count, error_count, row_count, latency_us = per_version.get(
                labels, ([0] * (len(PROMETHEUS_BUCKETS_S) + 1), 0, 0, 0, 0)
            )
            for index, n in cell.buckets.items():
                coarse[_COARSE_OF_FINE[index]] += n
            per_version[labels] = (
                coarse,
                count + cell.count,
                error_count + cell.errors,
                row_count + cell.rows,
                latency_us + cell.latency_us_sum,
            )
        for labels, (coarse, _count, error_count, row_count, latency_us) in per_version.items():
            errors.add_metric(list(labels), error_count)
            rows.add_metric(list(labels), row_count)
            cumulative, buckets = 0, []
            for bound, n in zip((*PROMETHEUS_BUCKETS_S, float("inf")), coarse, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            latency.add_metric(list(labels), buckets, latency_us / 1e6)
        yield from (requests, errors, rows, latency)
        yield CounterMetricFamily(
            "modelyard_gateway_unknown_deployment_requests",
            "Requests for a deployment not in the route table (not recorded per name).",
            value=gateway.unknown_deployment_requests,
        )
        yield GaugeMetricFamily(
            "modelyard_gateway_routes", "Routes in the in-memory table.", value=len(gateway.routes)
        )
        yield GaugeMetricFamily(
            "modelyard_gateway_redis_up",
            "1 while the route sync reaches Redis.",
            value=1 if gateway.redis_ok else 0,
        )
        yield GaugeMetricFamily(
            "modelyard_gateway_metrics_pending_requests",
            "Requests recorded but not yet flushed to Redis.",
            value=gateway.metrics.pending_requests,
        )
        yield CounterMetricFamily(
            "modelyard_gateway_metrics_dropped_cells",
            "Metric cells dropped because Redis stayed unreachable.",
            value=gateway.metrics.dropped_cells,
        )
        yield from _replica_metrics(gateway)
        yield CounterMetricFamily(
            "modelyard_gateway_samples_written",
            "Payload samples written to Redis streams.",
            value=gateway.sampler.stats.written,
        )


def _replica_metrics(gateway: Gateway) -> Iterator[Metric]:
    labels = ["deployment", "upstream"]
    inflight = GaugeMetricFamily(
        "modelyard_gateway_upstream_inflight",
        "Mean requests in flight from this gateway per replica over the last report interval.",
        labels=labels,
    )
    peak = GaugeMetricFamily(
        "modelyard_gateway_upstream_inflight_peak",
        "Most requests in flight at once per replica over the last report interval.",
        labels=labels,
    )
    for (deployment, upstream), (mean, most) in sorted(gateway.inflight.items()):
        inflight.add_metric([deployment, upstream], mean)
        peak.add_metric([deployment, upstream], most)
    ejected = GaugeMetricFamily(
        "modelyard_gateway_upstream_ejected",
        "1 while a replica is left out of traffic after failing (until it answers again).",
        labels=labels,
    )
    for replicas in gateway.balancer.all_sets():
        for replica in replicas.replicas:
            ejected.add_metric([replicas.deployment, replica.url], 1 if replica.ejected else 0)
    yield from (inflight, peak, ejected)
    yield from _arm_metrics(gateway)
    yield CounterMetricFamily(
        "modelyard_gateway_upstream_failures",
        "Connections to a replica that were refused, reset or cut (each ejects the replica).",
        value=gateway.upstream_failures,
    )
    yield CounterMetricFamily(
        "modelyard_gateway_upstream_retries",
        "Requests sent again to another replica after one failed.",
        value=gateway.upstream_retries,
    )
    yield CounterMetricFamily(
        "modelyard_gateway_repair_requests",
        "Repair requests (deployments.upstream_repair) the Celery broker took.",
        value=gateway.repairs.sent if gateway.repairs is not None else 0,
    )


def _arm_metrics(gateway: Gateway) -> Iterator[Metric]:
    """Progressive delivery: canary fallbacks, and per deployment what the shadow did."""
    yield CounterMetricFamily(
        "modelyard_gateway_canary_fallbacks",
        "Canary requests answered by live because no canary replica could take them.",
        value=gateway.canary_fallbacks,
    )
    families = (
        ("mirrored", "Live requests sent to the deployment's shadow."),
        ("dropped", "Live requests picked for mirroring but dropped: the shadow queue was full."),
        ("errors", "Mirrored requests the shadow failed (>= 500, timeout, connection error)."),
    )
    for index, (name, text) in enumerate(families):
        family = CounterMetricFamily(
            f"modelyard_gateway_shadow_{name}", text, labels=["deployment"]
        )
        for deployment, counts in sorted(gateway.shadow.counters.items()):
            family.add_metric([deployment], counts[index])
        yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def prometheus_text(gateway: Gateway) -> bytes:
    """The gateway's metrics in the Prometheus text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(gateway))
    return generate_latest(registry)
