"""Quality benchmark: a million labels ingested and joined, a window's metrics computed.

Issue 20's target: 1,000,000 labels ingested and joined, metrics for a window computed, in
<= 5 s; and the storage a million logged predictions take. The log is filled with SQL
(generate_series: the benchmark is about labels and the join, not about the stream); the
stream -> table ingest is timed separately on 100,000 answers through the real ingester.
Prints figures; asserts the counts, never the speed.

Run: python -m devstack test -- -m benchmark -s tests/benchmarks/test_quality_bench.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from gateway.prediction_log import PREDICTIONS_STREAM, entry_fields, inference_id_new
from monitoring.selectors import quality_compute
from monitoring.services import labels_ingest, predictions_ingest
from monitoring.services.prediction_log import partitions_ensure
from tests.factories import DeploymentFactory, ModelVersionFactory, RegisteredModelFactory
from tests.monitoring.conftest import monitoring_redis, private_redis_url  # noqa: F401

pytestmark = [pytest.mark.benchmark, pytest.mark.django_db]

ROWS = 1_000_000


def _deployment():
    model = RegisteredModelFactory(name="bench-quality")
    contract = {"output": {"kind": "label", "classes": ["no", "yes"], "probabilities": True}}
    ModelVersionFactory(model=model, contract=contract)
    return DeploymentFactory(name="bench-quality", model=model)


# Committed, as an upload is: in a test's transaction, work done at commit (deferred
# constraint checks) would be left out of the figure.
@pytest.mark.django_db(transaction=True)
def test_a_million_labels_joined_and_scored(monitoring_redis):  # noqa: F811
    deployment = _deployment()
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    partitions_ensure(start.date(), now.date())
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_prediction")
        cursor.execute(
            """
            INSERT INTO monitoring_prediction
                (deployment_id, row_id, ts, version, arm, prediction, probabilities, sampled)
            SELECT %s, lpad(to_hex(g), 28, '0'), %s + (g * interval '3 milliseconds'), 1, 'live',
                   CASE WHEN g %% 3 = 0 THEN '"yes"'::jsonb ELSE '"no"'::jsonb END,
                   ARRAY[0.6 - (g %% 7) / 20.0, 0.4 + (g %% 7) / 20.0]::double precision[], false
            FROM generate_series(1, %s) g
            """,
            [deployment.pk, start, ROWS],
        )
        cursor.execute("ANALYZE monitoring_prediction")
        cursor.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'monitoring_prediction'::regclass"
        )
        (log_bytes,) = cursor.fetchone()

    labels = [
        {"id": f"{g:028x}", "label": "yes" if g % 4 == 0 else "no"} for g in range(1, ROWS + 1)
    ]
    began = time.perf_counter()
    result = labels_ingest(deployment=deployment, labels=labels)
    ingested = time.perf_counter() - began
    quality = quality_compute(deployment=deployment, version=1, start=start, end=now)
    total = time.perf_counter() - began

    assert result.created == ROWS and result.unmatched == 0
    assert quality["labelled"] == ROWS
    print(
        f"\n1,000,000 labels: ingested in {ingested:.2f} s, + join and metrics "
        f"{total - ingested:.2f} s = {total:.2f} s (target <= 5 s); accuracy "
        f"{quality['metrics']['accuracy']['value']:.4f}, AUC {quality['metrics']['roc_auc']:.4f}"
        f"\nstorage: {log_bytes / ROWS:.0f} bytes per logged prediction "
        f"({log_bytes / 2**20:.0f} MiB per million, table + indexes)"
    )


def test_stream_to_log_ingest_rate(monitoring_redis):  # noqa: F811
    deployment = _deployment()
    answers = 100_000
    pipe = monitoring_redis.pipeline(transaction=False)
    now = time.time()
    for n in range(answers):
        pipe.xadd(
            PREDICTIONS_STREAM,
            entry_fields(
                deployment=deployment.name,
                version=1,
                inference_id=inference_id_new(),
                ts=now - n * 0.001,
                answer='{"predictions":["yes"],"probabilities":[[0.3,0.7]],"model_version":1}',
            ),
        )
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    began = time.perf_counter()
    rows = 0
    while True:
        result = predictions_ingest(monitoring_redis, consumer="bench", count=5000)
        rows += result.rows
        if result.entries == 0:
            break
    seconds = time.perf_counter() - began
    assert rows == answers
    rate = answers / seconds
    print(f"\nprediction log ingest: {answers:,} answers in {seconds:.2f} s ({rate:,.0f}/s)")
