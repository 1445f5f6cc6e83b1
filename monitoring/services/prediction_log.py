"""The prediction log: the gateway's stream of answers into a day-partitioned PostgreSQL table.

The gateway appends every answer to ``gateway.prediction_log.PREDICTIONS_STREAM``; this module
reads it as a Redis consumer group (so a worker killed mid-batch leaves its entries pending,
and the next run claims them back), explodes each answer into one row per prediction, writes
the rows with COPY into a temporary table and moves them into ``monitoring_prediction`` in
one statement that keeps the first row of an id (a client that reuses an id is counted, not
an error), then acknowledges and deletes the entries. The order -- commit, then XACK -- makes
the ingest at-least-once and the insert idempotent, so a crash between the two writes nothing
twice.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection, transaction

from deployments.models import Deployment
from gateway.prediction_log import INGEST_GROUP, PREDICTIONS_STREAM, row_id

logger = logging.getLogger(__name__)

TABLE = "monitoring_prediction"
# An entry a consumer took but did not acknowledge for this long belongs to a dead consumer.
CLAIM_IDLE_MS = 60_000


@dataclass
class IngestResult:
    entries: int = 0
    rows: int = 0
    duplicates: int = 0
    invalid: int = 0
    unknown_deployments: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "rows": self.rows,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "unknown_deployments": sorted(self.unknown_deployments),
        }


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def partitions_ensure(first: date, last: date) -> list[str]:
    """Create the daily partitions from ``first`` to ``last`` (inclusive) that are missing."""
    created = []
    existing = set(partitions_list())
    day = first
    with connection.cursor() as cursor:
        while day <= last:
            name = partition_name(day)
            if name not in existing:
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                cursor.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {TABLE} "
                    "FOR VALUES FROM (%s) TO (%s)",
                    [start, start + timedelta(days=1)],
                )
                created.append(name)
            day += timedelta(days=1)
    return created


def partitions_list() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s ORDER BY c.relname",
            [TABLE],
        )
        return [name for (name,) in cursor.fetchall()]


def partitions_drop(*, older_than: datetime) -> list[str]:
    """Drop the days that end before ``older_than`` (retention): whole tables, no DELETE."""
    cutoff = older_than.astimezone(UTC).date()
    dropped = []
    with connection.cursor() as cursor:
        for name in partitions_list():
            day = datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").date()
            if day + timedelta(days=1) <= cutoff:
                cursor.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
    return dropped


def _group_ensure(client: Any) -> None:
    try:
        client.xgroup_create(PREDICTIONS_STREAM, INGEST_GROUP, id="0", mkstream=True)
    except Exception as exc:  # BUSYGROUP: it exists (redis-py raises ResponseError)
        if "BUSYGROUP" not in str(exc):
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rows_of(fields: dict[str, str], deployment_id: int) -> list[tuple[Any, ...]]:
    """The log rows of one stream entry; raises ValueError/KeyError for a malformed one."""
    answer = json.loads(fields["answer"])
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    probabilities = answer.get("probabilities") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or (
        probabilities is not None
        and (not isinstance(probabilities, list) or len(probabilities) != len(predictions))
    ):
        raise ValueError(
            "the answer holds no predictions list (or probabilities of another length)"
        )
    ts = datetime.fromtimestamp(float(fields["ts"]), UTC)
    version = int(fields["version"])
    sampled = fields.get("sampled") == "1"
    rows = []
    for index, prediction in enumerate(predictions):
        proba = probabilities[index] if probabilities is not None else None
        if proba is not None and (
            not isinstance(proba, list) or not all(isinstance(p, int | float) for p in proba)
        ):
            raise ValueError("probabilities must be lists of numbers")
        rows.append(
            (
                deployment_id,
                row_id(fields["id"], index),
                ts,
                version,
                fields.get("arm") or "live",
                json.dumps(prediction),
                _array_literal(proba),
                sampled,
            )
        )
    return rows


def _array_literal(values: list[float] | None) -> str | None:
    if values is None:
        return None
    return "{" + ",".join("NaN" if not math.isfinite(v) else repr(float(v)) for v in values) + "}"


def predictions_ingest(
    client: Any, *, consumer: str, count: int = 5000, claim_idle_ms: int = CLAIM_IDLE_MS
) -> IngestResult:
    """Move up to ``count`` stream entries into the log (claiming a dead consumer's first)."""
    _group_ensure(client)
    result = IngestResult()
    claimed = client.xautoclaim(
        PREDICTIONS_STREAM, INGEST_GROUP, consumer, min_idle_time=claim_idle_ms, count=count
    )
    entries = list(claimed[1]) if claimed else []
    if len(entries) < count:
        read = client.xreadgroup(
            INGEST_GROUP, consumer, {PREDICTIONS_STREAM: ">"}, count=count - len(entries)
        )
        for _stream, items in read or []:
            entries.extend(items)
    if not entries:
        return result
    decoded = [
        (entry_id, {_text(k): _text(v) for k, v in raw.items()}) for entry_id, raw in entries
    ]
    names = dict(
        Deployment.objects.filter(
            name__in={fields.get("deployment", "") for _, fields in decoded}
        ).values_list("name", "pk")
    )
    rows: list[tuple[Any, ...]] = []
    for entry_id, fields in decoded:
        result.entries += 1
        deployment_id = names.get(fields.get("deployment", ""))
        if deployment_id is None:
            result.unknown_deployments.add(fields.get("deployment", ""))
            continue
        try:
            rows.extend(_rows_of(fields, deployment_id))
        except (ValueError, KeyError, TypeError) as exc:
            result.invalid += 1
            logger.warning("prediction log: dropping malformed entry %s: %s", entry_id, exc)
    if rows:
        inserted = _insert(rows)
        result.rows = inserted
        result.duplicates = len(rows) - inserted
    ids = [entry_id for entry_id, _ in entries]
    client.xack(PREDICTIONS_STREAM, INGEST_GROUP, *ids)
    client.xdel(PREDICTIONS_STREAM, *ids)
    return result


_COLUMNS = "deployment_id, row_id, ts, version, arm, prediction, probabilities, sampled"
# First row of an id wins: within the batch (DISTINCT ON, earliest ts) and against the log
# (NOT EXISTS probes each day's primary-key index on its leading columns).
_MOVE_SQL = f"""
    INSERT INTO {TABLE} ({_COLUMNS})
    SELECT {_COLUMNS} FROM (
        SELECT DISTINCT ON (deployment_id, row_id) *
        FROM prediction_incoming ORDER BY deployment_id, row_id, ts
    ) incoming
    WHERE NOT EXISTS (
        SELECT 1 FROM {TABLE} logged
        WHERE logged.deployment_id = incoming.deployment_id AND logged.row_id = incoming.row_id
    )
    ON CONFLICT DO NOTHING
"""  # noqa: S608 -- module constants only


def _insert(rows: list[tuple[Any, ...]]) -> int:
    days = sorted({row[2].date() for row in rows})
    with transaction.atomic():
        partitions_ensure(days[0], days[-1])
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS prediction_incoming "
                f"(LIKE {TABLE} INCLUDING DEFAULTS)"
            )
            # Emptied first, not ON COMMIT: inside an outer transaction this block is a
            # savepoint, and the rows of an earlier call would still be there.
            cursor.execute("TRUNCATE prediction_incoming")
            with cursor.copy(f"COPY prediction_incoming ({_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(_MOVE_SQL)
            return int(cursor.rowcount)
