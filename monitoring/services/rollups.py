"""Gateway metric buffers (Redis) → per-minute roll-up rows (PostgreSQL), and their retention.

The buffer layout and the idempotency protocol are documented in ``gateway.metrics``. A buffer
hash holds what was flushed since Redis created it; the first roll-up that sees it records the
stored row as its base (in the hash, once), and every roll-up writes base + hash as ABSOLUTE
values (``ON CONFLICT ... DO UPDATE SET count = EXCLUDED.count``). So a second run rewrites the
same row, and a hash Redis lost (a restart) is not overwritten by its partial successor: the new
hash's base is the row that kept the lost one's counts. A buffer leaves the dirty set only if no
flush touched it since it was read.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from deployments.models import Deployment
from gateway.metric_buffers import (
    CellTotals,
    MinuteBuffer,
    buffer_fields_answer,
    buffer_from_fields,
    metrics_buffer_set_base,
    metrics_dirty_keys,
    metrics_mark_clean,
)
from monitoring.choices import PERIOD_HOUR, PERIOD_MINUTE
from monitoring.models import MetricRollup

logger = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: two roll-ups at once could write an older total over a
# newer one (read 10, read 12, commit 12, commit 10), so only one runs at a time.
_ROLLUP_LOCK = 0x6D795F726F6C6C  # "my_roll"
_READ_BATCH = 500


@functools.lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


def metrics_redis() -> redis.Redis:
    """The Redis the gateway flushes into (``REDIS_URL``), looked up per call: tests swap it."""
    return _client(settings.REDIS_URL)


@dataclass(frozen=True)
class RollupResult:
    buffers: int  # dirty buffers seen
    rows_written: int
    requests: int  # sum of the counts written (a total, not new requests)
    marked_clean: int
    skipped: int  # expired, unknown deployment, or older than the minute retention
    locked: bool = False  # another roll-up held the lock; this one did nothing
    seconds: float = 0.0


# ABSOLUTE values on conflict (base + buffer hash is the minute's complete total): see above.
_UPSERT_SQL = """
INSERT INTO monitoring_metricrollup
    (deployment_id, version, status, period_seconds, start, count, rows, errors,
     latency_us_sum, histogram, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bigint[], now())
ON CONFLICT (deployment_id, version, status, period_seconds, start) DO UPDATE SET
    count = EXCLUDED.count,
    rows = EXCLUDED.rows,
    errors = EXCLUDED.errors,
    latency_us_sum = EXCLUDED.latency_us_sum,
    histogram = EXCLUDED.histogram,
    updated_at = EXCLUDED.updated_at
"""


# The stored rows of the cells whose buffers need a base, in one statement.
_STORED_SQL = """
SELECT r.deployment_id, r.version, r.status, r.start, r.count, r.rows, r.errors,
       r.latency_us_sum, r.histogram
FROM monitoring_metricrollup r
JOIN unnest(%s::bigint[], %s::integer[], %s::integer[], %s::timestamptz[])
    AS c(deployment_id, version, status, start)
  ON (r.deployment_id, r.version, r.status, r.start)
   = (c.deployment_id, c.version, c.status, c.start)
WHERE r.period_seconds = %s
"""

_Cell = tuple[int, int, int, datetime]  # (deployment_id, version, status, start)


def _stored_totals(cells: list[_Cell]) -> dict[_Cell, CellTotals]:
    """The minute rows already stored for ``cells`` (absent: no row yet, a base of zeros)."""
    columns = [list(column) for column in zip(*cells, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(_STORED_SQL, [*columns, PERIOD_MINUTE])
        return {
            (deployment_id, version, status, start): CellTotals(
                count, rows, errors, latency, tuple(histogram)
            )
            for deployment_id, version, status, start, count, rows, errors, latency, histogram in (
                cursor.fetchall()
            )
        }


def _with_bases(
    client: redis.Redis, pending: list[tuple[_Cell, MinuteBuffer]]
) -> list[tuple[_Cell, MinuteBuffer | None]]:
    """Give each never-rolled-up buffer the stored row as its base; answer them as they are now.

    Runs under the roll-up lock, inside its transaction: nothing else writes minute rows, so
    the row read is the one this buffer's counts are added to. Should this transaction roll
    back, the recorded base is still the stored row, which is all a base has to be.
    """
    stored = _stored_totals([cell for cell, _ in pending])
    pipe = client.pipeline(transaction=False)
    for cell, buffer in pending:
        metrics_buffer_set_base(pipe, buffer.key, stored.get(cell, CellTotals()))
    answers = pipe.execute()
    return [
        (cell, buffer_fields_answer(buffer.key, answer))
        for (cell, buffer), answer in zip(pending, answers, strict=True)
    ]


def _minute_cutoff(now: datetime) -> datetime:
    return now - timedelta(hours=settings.MODELYARD_METRICS_MINUTE_RETENTION_HOURS)


def metrics_rollup(*, client: redis.Redis | None = None, limit: int = 50_000) -> RollupResult:
    """Upsert every dirty gateway buffer as a minute row; running it twice counts nothing twice."""
    started = time.perf_counter()
    client = client or metrics_redis()
    dirty = metrics_dirty_keys(client, limit=limit)
    if not dirty:
        return RollupResult(0, 0, 0, 0, 0, seconds=time.perf_counter() - started)
    cutoff = _minute_cutoff(timezone.now())
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
            if not cursor.fetchone()[0]:
                return RollupResult(len(dirty), 0, 0, 0, 0, locked=True)
        rows: list[tuple[Any, ...]] = []
        clean: list[tuple[str, int]] = []
        skipped = 0
        names: dict[str, int] = {
            name.lower(): pk for pk, name in Deployment.objects.values_list("pk", "name")
        }
        for offset in range(0, len(dirty), _READ_BATCH):
            batch = dirty[offset : offset + _READ_BATCH]
            pipe = client.pipeline(transaction=False)
            for key, _ in batch:
                pipe.hgetall(key)
            ready: list[tuple[_Cell, MinuteBuffer | None]] = []
            pending: list[tuple[_Cell, MinuteBuffer]] = []
            for (key, score), fields in zip(batch, pipe.execute(), strict=True):
                clean.append((key, score))
                if not fields:  # expired (TTL) before anyone rolled it up
                    skipped += 1
                    continue
                buffer = buffer_from_fields(key, fields)
                deployment_id = names.get(buffer.deployment.lower())
                start = datetime.fromtimestamp(buffer.minute, tz=UTC)
                if deployment_id is None or start < cutoff:
                    # A deleted deployment, or a minute already downsampled into its hour:
                    # writing it again would count it twice.
                    skipped += 1
                    logger.warning("metrics roll-up skipped %s (unknown or too old)", key)
                    continue
                cell = (deployment_id, buffer.version, buffer.status, start)
                (pending if buffer.needs_base else ready).append((cell, buffer))
            if pending:
                ready += _with_bases(client, pending)
            for (deployment_id, version, status, start), maybe in ready:
                if maybe is None:  # Redis lost it between the two reads
                    skipped += 1
                    continue
                total = maybe.total()
                rows.append(
                    (
                        deployment_id,
                        version,
                        status,
                        PERIOD_MINUTE,
                        start,
                        total.count,
                        total.rows,
                        total.errors,
                        total.latency_us_sum,
                        list(total.histogram),
                    )
                )
        if rows:
            # Raw executemany (psycopg pipelines it): the ORM's bulk upsert spent most of its
            # time preparing 149 histogram counts per row one by one.
            with connection.cursor() as cursor:
                cursor.executemany(_UPSERT_SQL, rows)
    # Only after the commit: a crash before it leaves the keys dirty for the next run.
    # One pipelined round trip per batch instead of one per key (the conditional ZREM is
    # gateway.metrics' own script; on a pipeline its call is queued, the answers come below).
    marked = 0
    for offset in range(0, len(clean), _READ_BATCH):
        pipe = client.pipeline(transaction=False)
        for key, score in clean[offset : offset + _READ_BATCH]:
            metrics_mark_clean(pipe, key, score)
        marked += sum(int(bool(answer)) for answer in pipe.execute())
    return RollupResult(
        buffers=len(dirty),
        rows_written=len(rows),
        requests=sum(row[5] for row in rows),
        marked_clean=marked,
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


@transaction.atomic
def metrics_downsample(*, now: datetime | None = None) -> int:
    """Fold minute rows older than the minute retention into hour rows; return rows folded.

    Atomic: the minute rows are deleted in the same statement that adds them to their hour,
    so a second run finds nothing left to fold (and a late hour row simply grows).
    """
    cutoff = _minute_cutoff(now or timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH moved AS (
                DELETE FROM monitoring_metricrollup
                WHERE period_seconds = %(minute)s AND start < %(cutoff)s
                RETURNING deployment_id, version, status, start, count, rows, errors,
                          latency_us_sum, histogram
            ), buckets AS (
                SELECT deployment_id, version, status, date_trunc('hour', start) AS hour,
                       b.i, SUM(b.n)::bigint AS n
                FROM moved, unnest(histogram) WITH ORDINALITY AS b(n, i)
                GROUP BY 1, 2, 3, 4, 5
            ), hist AS (
                SELECT deployment_id, version, status, hour, array_agg(n ORDER BY i) AS histogram
                FROM buckets GROUP BY 1, 2, 3, 4
            ), totals AS (
                SELECT deployment_id, version, status, date_trunc('hour', start) AS hour,
                       SUM(count)::bigint AS count, SUM(rows)::bigint AS rows,
                       SUM(errors)::bigint AS errors, SUM(latency_us_sum)::bigint AS lat,
                       COUNT(*) AS folded
                FROM moved GROUP BY 1, 2, 3, 4
            ), upserted AS (
                INSERT INTO monitoring_metricrollup AS r
                    (deployment_id, version, status, period_seconds, start, count, rows, errors,
                     latency_us_sum, histogram, updated_at)
                SELECT t.deployment_id, t.version, t.status, %(hour)s, t.hour, t.count, t.rows,
                       t.errors, t.lat, h.histogram, now()
                FROM totals t JOIN hist h USING (deployment_id, version, status, hour)
                ON CONFLICT (deployment_id, version, status, period_seconds, start) DO UPDATE SET
                    count = r.count + EXCLUDED.count,
                    rows = r.rows + EXCLUDED.rows,
                    errors = r.errors + EXCLUDED.errors,
                    latency_us_sum = r.latency_us_sum + EXCLUDED.latency_us_sum,
                    histogram = ARRAY(
                        SELECT a + b FROM unnest(r.histogram, EXCLUDED.histogram) AS x(a, b)
                    ),
                    updated_at = now()
                RETURNING 1
            )
            SELECT COALESCE(SUM(folded), 0) FROM totals
            """,
            {"minute": PERIOD_MINUTE, "hour": PERIOD_HOUR, "cutoff": cutoff},
        )
        folded = int(cursor.fetchone()[0])
    return folded


def metrics_retention(*, now: datetime | None = None) -> tuple[int, int]:
    """Downsample old minutes, delete hours past the hour retention; (folded, deleted)."""
    now = now or timezone.now()
    folded = metrics_downsample(now=now)
    deleted, _ = MetricRollup.objects.filter(
        period_seconds=PERIOD_HOUR,
        start__lt=now - timedelta(days=settings.MODELYARD_METRICS_HOUR_RETENTION_DAYS),
    ).delete()
    return folded, deleted
