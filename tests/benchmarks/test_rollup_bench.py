"""Roll-up benchmark: one minute of 1,000 req/s through the gateway's recorder, into PostgreSQL.

Prints seconds; asserts the counts, never the speed.

Run: python -m devstack test -- -m benchmark -s tests/benchmarks/test_rollup_bench.py
"""

from __future__ import annotations

import random
import time

import pytest

from deployments.models import Deployment
from gateway.metrics import METRICS_DIRTY_KEY, MetricsRecorder
from monitoring.models import MetricRollup
from monitoring.services import metrics_rollup
from tests.monitoring.conftest import (  # noqa: F401 - fixtures
    deployment,
    flush,
    minute_ago,
    monitoring_redis,
    private_redis_url,
    registered_model,
    trained_models,
    versions,
)

pytestmark = [pytest.mark.benchmark, pytest.mark.django_db]

REQUESTS = 60_000  # one minute at 1,000 req/s


def _load(recorder, names, now):
    rng = random.Random(1)
    statuses = [200] * 97 + [400, 500, 503]
    for _ in range(REQUESTS):
        recorder.record(
            deployment=rng.choice(names),
            version=rng.choice((1, 2)),
            status=rng.choice(statuses),
            latency_s=rng.lognormvariate(-6, 0.8),  # median ~2.5 ms
            rows=rng.randint(1, 20),
            now=now + rng.random() * 59,
        )


@pytest.mark.parametrize("deployments", [1, 50])
def test_rollup_of_one_minute_at_1000_requests_per_second(
    deployments,
    deployment,  # noqa: F811 - the fixture imported above
    monitoring_redis,  # noqa: F811
    settings,
):
    names = [deployment.name]
    for i in range(1, deployments):
        copy = Deployment.objects.create(
            name=f"{deployment.name}-{i}",
            model=deployment.model,
            environment=deployment.environment,
            created_by=deployment.created_by,
        )
        names.append(copy.name)
    recorder = MetricsRecorder()
    now = minute_ago(2) // 60 * 60
    started = time.perf_counter()
    _load(recorder, names, now)
    record_s = time.perf_counter() - started
    started = time.perf_counter()
    flush(recorder, settings.REDIS_URL)
    flush_s = time.perf_counter() - started
    buffers = monitoring_redis.zcard(METRICS_DIRTY_KEY)

    result = metrics_rollup()
    again = metrics_rollup()  # nothing dirty: the steady-state cost of an idle run

    assert result.requests == REQUESTS and again.buffers == 0
    assert sum(MetricRollup.objects.values_list("count", flat=True)) == REQUESTS
    print()
    print(
        f"roll-up, 1 minute at 1,000 req/s over {deployments} deployment(s) x 2 versions x "
        f"4 statuses = {buffers} buffers"
    )
    each_us = record_s / REQUESTS * 1e6
    print(
        f"  gateway record() for {REQUESTS:,} requests:  {record_s:6.3f} s ({each_us:.1f} us each)"
    )
    print(f"  gateway flush to Redis:                  {flush_s:6.3f} s")
    rows = result.rows_written
    print(f"  roll-up into PostgreSQL:                 {result.seconds:6.3f} s ({rows} rows)")
    print(f"  roll-up with nothing dirty:              {again.seconds:6.4f} s")
