"""Prometheus metrics of the web process (the gateway keeps its own).

Under gunicorn each worker is a process: with ``PROMETHEUS_MULTIPROC_DIR`` set (before
the process starts), prometheus_client writes samples to files there and /metrics sums
the files of all workers. The directory must be emptied when the web server starts.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter(
    "modelyard_web_http_requests_total",
    "HTTP requests answered by the web process.",
    ["method", "view", "status"],
)
HTTP_LATENCY = Histogram(
    "modelyard_web_http_request_duration_seconds",
    "Time from the request reaching Django to its response leaving it.",
    ["method", "view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Labels are bounded: an attacker choosing methods or paths must not grow the series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
