"""The prediction log's contract: what the gateway appends per answer, what monitoring ingests.

Redis layout
------------
``modelyard:predictions`` (one stream for every deployment, capped ``MAXLEN ~``
:data:`STREAM_MAXLEN` so a stopped ingester cannot fill Redis). Fields of each entry, all strings:

- ``deployment``: deployment name; ``version``: model version number that answered
- ``arm``: which arm answered (``live`` until progressive delivery adds others)
- ``id``: the inference id (:func:`inference_id_new`, or the client's own, checked with
  :func:`inference_id_check`)
- ``ts``: unix time of the answer, seconds with 3 decimals
- ``prediction``: JSON list, one entry per row; ``probabilities``: JSON list of per-class lists,
  or absent when the answer had none
- ``sampled``: ``"1"`` when the gateway logs only a share of this deployment's answers (over its
  full-logging rate), so counts read from the log are a sample; ``"0"`` when every answer is here

A request of several rows has one id; its rows are ``<id>`` for the first row and ``<id>:<n>`` for
the n-th (0-based, n >= 1), so a label names exactly one row.

This module needs nothing but the standard library (and redis-py for the writer).
"""

from __future__ import annotations

import json
import os
import re
import time

PREDICTIONS_STREAM = "modelyard:predictions"
STREAM_MAXLEN = 1_000_000
INGEST_GROUP = "monitoring-ingest"
ARM_LIVE = "live"

# Client ids: safe in a header, a CSV cell and a URL without escaping; long enough for a UUID
# with a prefix or a business key.
INFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}$")
INFERENCE_ID_HEADER = "x-modelyard-inference-id"


def inference_id_new() -> str:
    """A new id: 12 hex digits of milliseconds then 16 random hex digits (time-ordered, so the
    log's index on ids stays append-mostly, and unique without coordination)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


def inference_id_check(value: str) -> str | None:
    """The problem with a client's id, or None when it is valid."""
    if not INFERENCE_ID_RE.match(value):
        return (
            "an inference id is 1-96 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def row_id(inference_id: str, row: int) -> str:
    """The id of row ``row`` of a request (see the module docstring)."""
    return inference_id if row == 0 else f"{inference_id}:{row}"


def entry_fields(
    *,
    deployment: str,
    version: int,
    inference_id: str,
    ts: float,
    predictions: list[object],
    probabilities: list[list[float]] | None,
    arm: str = ARM_LIVE,
    sampled: bool = False,
) -> dict[str, str]:
    """One stream entry's fields (the gateway's writer and the tests build them here)."""
    fields = {
        "deployment": deployment,
        "version": str(version),
        "arm": arm,
        "id": inference_id,
        "ts": f"{ts:.3f}",
        "prediction": json.dumps(predictions, separators=(",", ":")),
        "sampled": "1" if sampled else "0",
    }
    if probabilities is not None:
        fields["probabilities"] = json.dumps(probabilities, separators=(",", ":"))
    return fields
