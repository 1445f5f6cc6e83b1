"""Ground-truth labels of logged predictions: stored as posted, idempotent by row id.

Labels arrive days after the predictions, in bulk (JSON or CSV); they are kept independently
of the log and joined when quality is computed (``monitoring.selectors.quality``), so a label
that arrives before its prediction was ingested still counts once it is.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC
from itertools import chain
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.errors import InvalidInput
from deployments.models import Deployment
from gateway.prediction_log import INFERENCE_ID_RE
from monitoring.services.prediction_log import TABLE as PREDICTIONS

MAX_LABELS_PER_REQUEST = 1_000_000
# pg_advisory_xact_lock(class, deployment id): one label upload per deployment at a time.
_LABELS_LOCK = 20_001
# A label names a request's id, or one of its rows: "<id>:<row>" (gateway.prediction_log).
_INVALID_SHOWN = 20


@dataclass
class LabelsResult:
    received: int
    created: int
    updated: int
    unchanged: int
    unmatched: int
    invalid: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            # Stored anyway: the prediction may not be ingested yet, or may be outside the log.
            "unmatched": self.unmatched,
            "invalid": len(self.invalid),
            "invalid_rows": self.invalid[:_INVALID_SHOWN],
        }


# An inference id, or one of its rows "<id>:<n>" (n >= 1, no leading zero): one regex, since
# a million labels are checked per request.
# Used with fullmatch (a trailing "$" would let "<id>\n" through, and break the COPY).
LABEL_ID_RE = re.compile(INFERENCE_ID_RE.pattern + r"(?::[1-9][0-9]{0,5})?")  # rows 1..999,999


def _label_problem(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return "label must be a string, number or boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "label must be a finite number"
    return None


def labels_parse_csv(text: str) -> list[dict[str, Any]]:
    """Rows of a CSV with a header naming ``id`` and ``label`` (and optionally ``at``)."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip().lower() for name in reader.fieldnames or []]
    if "id" not in header or "label" not in header:
        raise InvalidInput(
            "labels CSV: the first line must name the columns id and label (and optionally at).",
            code="invalid_labels",
        )
    reader.fieldnames = header
    return [
        {
            "id": row.get("id"),
            "label": row.get("label"),
            **({"at": row["at"]} if row.get("at") else {}),
        }
        for row in reader
    ]


def labels_ingest(*, deployment: Deployment, labels: Any) -> LabelsResult:
    """Store ``labels`` (a list of ``{"id", "label", "at"?}``); bad rows are reported, the rest
    kept. Idempotent: the same pairs again are ``unchanged``; a new label for an id updates."""
    if not isinstance(labels, list):
        raise InvalidInput(
            "labels: expected a list of {id, label, at?} objects.", code="invalid_labels"
        )
    if len(labels) > MAX_LABELS_PER_REQUEST:
        raise InvalidInput(
            f"labels: at most {MAX_LABELS_PER_REQUEST:,} per request, got {len(labels):,}.",
            code="invalid_labels",
        )
    fast = _copy_of_plain_labels(labels)
    invalid: list[dict[str, Any]] = []
    if fast is not None:
        text, count = fast
    else:
        lines, invalid = _lines_checked(labels)
        text, count = "".join(lines.values()), len(lines)
    created = updated = unmatched = 0
    if count:
        created, updated, unmatched = _upsert(deployment, text)
    return LabelsResult(
        received=len(labels),
        created=created,
        updated=updated,
        unchanged=count - created - updated,
        unmatched=unmatched,
        invalid=invalid,
    )


# A valid id as a whole line of a newline-joined list of ids.
_LABEL_ID_LINE_RE = re.compile(f"^{LABEL_ID_RE.pattern}$", re.MULTILINE)


def _copy_of_plain_labels(labels: list[Any]) -> tuple[str, int] | None:
    """The COPY text and its number of ids for a request whose labels are all
    ``{"id": <valid id>, "label": <str>}`` (what a pipeline posts: classes as text), or None
    for any other request.

    The same lines as ``_lines_checked``, made with whole-list passes in C instead of a
    Python loop per label (a million labels: 0.6 s against 1.25 s, measured). Any other
    shape -- another key, a number, a bad id -- goes the checked way, which names each
    problem."""
    try:
        if not all(len(item) == 2 for item in labels):
            return None
        ids = [item["id"] for item in labels]
        values = [item["label"] for item in labels]
        joined = "\n".join(ids)  # TypeError unless every id is a str
    except (TypeError, KeyError):
        return None
    if not all(type(value) is str for value in values):
        return None
    # No id holds a newline (each line is one id), and every line is a valid id.
    if joined.count("\n") != len(ids) - 1 or sum(
        1 for _ in _LABEL_ID_LINE_RE.finditer(joined)
    ) != len(ids):
        return None
    rest = {value: _line_after_id(_label_field(value)) for value in set(values)}
    if len(set(ids)) == len(ids):
        pairs: Any = zip(ids, map(rest.__getitem__, values), strict=True)
        return "".join(chain.from_iterable(pairs)), len(ids)
    # An id twice in a request: the last line wins, as in _lines_checked.
    lines = dict(zip(ids, map(rest.__getitem__, values), strict=True))
    return "".join(chain.from_iterable(lines.items())), len(lines)


def _lines_checked(labels: list[Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Each label checked on its own: the COPY lines of the valid ones, the problems of the rest."""
    # One pass: each valid label becomes its COPY line at once (the last line of an id in
    # a request wins); a label's JSON is encoded once per distinct value (labels repeat).
    lines: dict[str, str] = {}
    encoded: dict[tuple[type, Any], str] = {}
    invalid: list[dict[str, Any]] = []
    for index, item in enumerate(labels):
        if not isinstance(item, dict):
            invalid.append({"index": index, "problem": "each label is an object {id, label, at?}"})
            continue
        row_id, label, at = item.get("id"), item.get("label"), item.get("at")
        if not isinstance(row_id, str) or not LABEL_ID_RE.fullmatch(row_id):
            invalid.append(
                {"index": index, "problem": "id is not an inference id (or '<inference id>:<row>')"}
            )
            continue
        key = (type(label), label) if not isinstance(label, dict | list) else None
        text = encoded.get(key) if key is not None else None
        if text is None:
            problem = _label_problem(label)
            if problem is not None:
                invalid.append({"index": index, "problem": problem})
                continue
            text = encoded[key] = _label_field(label)  # type: ignore[index]
        when = _NO_TIME
        if at not in (None, ""):
            parsed = parse_datetime(at) if isinstance(at, str) else None
            if parsed is None:
                invalid.append({"index": index, "problem": "at must be an ISO 8601 date-time"})
                continue
            when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
        lines[row_id] = row_id + _line_after_id(text, when)
    return lines, invalid


# COPY's NULL: a label without its own time is labelled at the upload's (_upsert).
_NO_TIME = "\\N"


def _line_after_id(label_field: str, when: str = _NO_TIME) -> str:
    """The rest of a ``label_incoming`` COPY line after its id: label, labelled_at."""
    return f"\t{label_field}\t{when}\n"


def _label_field(label: Any) -> str:
    """A label as its COPY field: its JSON text, escaped."""
    return _copy_text(json.dumps(label))


def _copy_text(value: str) -> str:
    # COPY's text format: backslash, tab and newline are escaped (JSON text keeps tabs and
    # newlines escaped already, but a label may hold a backslash).
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _upsert(deployment: Deployment, copy_text: str) -> tuple[int, int, int]:
    """COPY the lines (one per id) in, then update the labels that changed and insert the new ones.

    Two plain statements under a per-deployment advisory lock instead of INSERT ... ON
    CONFLICT DO UPDATE: measured here on a million labels, 2.4 s against 5.5 s (the
    speculative insertion per row); the lock makes the insert safe against a concurrent
    upload of the same ids (only uploads write labels).
    """
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LABELS_LOCK, deployment.pk])
        # The upload's rows wait in an UNLOGGED table of this transaction, not a TEMP one: a
        # temporary table is private to its backend, so PostgreSQL's parallel workers cannot
        # read it, and the unmatched count below ran on one core (a million labels: 0.38 s
        # in parallel against 0.74 s, measured). Unlogged: no WAL for rows dropped at commit.
        # Created and dropped inside the transaction, so a failed upload leaves no table; the
        # backend's pid keeps two uploads' tables apart.
        cursor.execute("SELECT pg_backend_pid()")
        staging = f"label_incoming_{int(cursor.fetchone()[0])}"  # a name made of a number
        cursor.execute(
            f"CREATE UNLOGGED TABLE {staging} "
            "(row_id varchar(104), label jsonb, labelled_at timestamptz)"
        )
        with cursor.copy(f"COPY {staging} (row_id, label, labelled_at) FROM STDIN") as copy:
            copy.write(copy_text)
        cursor.execute(f"ANALYZE {staging}")  # a new table has no statistics otherwise
        cursor.execute(
            f"""
            UPDATE monitoring_predictionlabel stored
            SET label = incoming.label,
                labelled_at = coalesce(incoming.labelled_at, %s), received_at = %s
            FROM {staging} incoming
            WHERE stored.deployment_id = %s AND stored.row_id = incoming.row_id
              AND stored.label IS DISTINCT FROM incoming.label
            """,  # noqa: S608 -- the staging table's name is made of a number
            [now, now, deployment.pk],
        )
        updated = cursor.rowcount
        cursor.execute(
            f"""
            INSERT INTO monitoring_predictionlabel
                (deployment_id, row_id, label, labelled_at, received_at)
            SELECT %s, incoming.row_id, incoming.label, coalesce(incoming.labelled_at, %s), %s
            FROM {staging} incoming
            WHERE NOT EXISTS (
                SELECT 1 FROM monitoring_predictionlabel stored
                WHERE stored.deployment_id = %s AND stored.row_id = incoming.row_id
            )
            """,  # noqa: S608 -- the staging table's name is made of a number
            [deployment.pk, now, now, deployment.pk],
        )
        created = cursor.rowcount
        cursor.execute(
            f"""
            SELECT count(*) FROM {staging} incoming WHERE NOT EXISTS (
                SELECT 1 FROM {PREDICTIONS} logged
                WHERE logged.deployment_id = %s AND logged.row_id = incoming.row_id
            )
            """,  # noqa: S608 -- a module constant and the staging table's name
            [deployment.pk],
        )
        (unmatched,) = cursor.fetchone()
        cursor.execute(f"DROP TABLE {staging}")
    return int(created), int(updated), int(unmatched)
