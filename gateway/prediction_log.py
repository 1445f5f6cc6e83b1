"""The prediction log: what the gateway appends per answer, and what monitoring ingests.

Redis layout
------------
``modelyard:predictions`` (one stream for every deployment, capped ``MAXLEN ~``
:data:`STREAM_MAXLEN` so a stopped ingester cannot fill Redis). Fields of each entry:

- ``deployment``: deployment name; ``version``: model version number that answered
- ``arm``: which arm answered (``live`` until progressive delivery adds others)
- ``id``: the inference id (:func:`inference_id_new`, or the client's own, checked with
  :func:`inference_id_check`)
- ``ts``: unix time of the answer, seconds with 3 decimals
- ``answer``: the model server's success body as it came (``{"predictions": [...],
  "probabilities": [[...]], ...}``). The gateway never parses it: the ingester does, off the
  request path.
- ``sampled``: ``"1"`` when the deployment was over its full-logging rate and this answer was
  drawn at the sample rate (counts read from the log are then a sample); ``"0"`` otherwise.

A request of several rows has one id; its rows are ``<id>`` for the first row and ``<id>:<n>`` for
the n-th (0-based, n >= 1), so a label names exactly one row.

:class:`PredictionLogger` is the gateway's writer, shaped like the payload sampler
(``gateway.sampling``): the request path appends a reference to a bounded deque, a background
flush writes batches with one script call each, a failed batch goes back in front.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.rates import DeploymentRates

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

PREDICTIONS_STREAM = "modelyard:predictions"
STREAM_MAXLEN = 1_000_000
INGEST_GROUP = "monitoring-ingest"
ARM_LIVE = "live"

# Client ids: safe in a header, a CSV cell and a URL without escaping; long enough for a UUID
# with a prefix or a business key.
# Used with fullmatch: a pattern's "$" would also take the id "abc\n".
INFERENCE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,95}")
INFERENCE_ID_HEADER = b"x-modelyard-inference-id"


def inference_id_new() -> str:
    """A new id: 12 hex digits of milliseconds then 16 random hex digits (time-ordered, so the
    log's index on ids stays append-mostly, and unique without coordination)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


def inference_id_check(value: str) -> str | None:
    """The problem with a client's id, or None when it is valid."""
    if not INFERENCE_ID_RE.fullmatch(value):
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
    answer: bytes | str,
    arm: str = ARM_LIVE,
    sampled: bool = False,
) -> dict[str, Any]:
    """One stream entry's fields (what the flush script writes; the tests build them here)."""
    return {
        "deployment": deployment,
        "version": str(version),
        "arm": arm,
        "id": inference_id,
        "ts": f"{ts:.3f}",
        "answer": answer,
        "sampled": "1" if sampled else "0",
    }


@dataclass(slots=True)
class _Entry:
    deployment: str
    version: int
    arm: str
    inference_id: str
    ts: float
    answer: bytes
    sampled: bool


@dataclass(slots=True)
class LoggerStats:
    kept: int = 0
    written: int = 0
    sampled_out: int = 0  # over the full-logging rate and not drawn
    dropped_buffer_full: int = 0
    dropped_redis_error: int = 0


class PredictionLogger:
    """Every answer up to ``full_per_s`` per deployment, then a ``sample_rate`` share of the
    rest (marked sampled); a bounded buffer; never blocks the request."""

    def __init__(
        self,
        *,
        full_per_s: float,
        sample_rate: float,
        buffer_size: int,
        stream_maxlen: int = STREAM_MAXLEN,
        rng: random.Random | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        if full_per_s < 0 or not 0.0 <= sample_rate <= 1.0 or buffer_size < 1:
            raise ValueError(
                "prediction log: full_per_s >= 0, sample_rate in [0, 1] and buffer_size >= 1, "
                f"got {full_per_s}, {sample_rate}, {buffer_size}"
            )
        self.full_per_s = full_per_s
        self.sample_rate = sample_rate
        self.buffer_size = buffer_size
        self.stream_maxlen = stream_maxlen
        # A second's worth of burst: a burst of a second is logged whole.
        self._rates = DeploymentRates(per_s=full_per_s, burst=full_per_s, clock=clock)
        self._random = (rng or random.Random()).random
        self._pending: deque[_Entry] = deque()
        self._script: AsyncScript | None = None
        self.stats = LoggerStats()

    def keep(
        self, deployment: str, version: int, inference_id: str, answer: bytes, arm: str = ARM_LIVE
    ) -> bool:
        """Log this answer (a reference; nothing is parsed or copied). True if kept."""
        sampled = False
        if not self._rates.take(deployment):
            if self._random() >= self.sample_rate:
                self.stats.sampled_out += 1
                return False
            sampled = True
        if len(self._pending) >= self.buffer_size:
            self.stats.dropped_buffer_full += 1
            return False
        self._pending.append(
            _Entry(deployment, version, arm, inference_id, time.time(), answer, sampled)
        )
        self.stats.kept += 1
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, client: redis.asyncio.Redis, *, batch_size: int = 128) -> int:
        """Write the buffer in batches (one script call each); a failed batch goes back in
        front, in order (within ``buffer_size``). Returns how many were written."""
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_FLUSH_LUA)
        script = self._script
        written = 0
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(batch_size, len(self._pending)))]
            args: list[Any] = [PREDICTIONS_STREAM, self.stream_maxlen]
            for entry in batch:
                args += (
                    entry.deployment,
                    entry.version,
                    entry.arm,
                    entry.inference_id,
                    f"{entry.ts:.3f}",
                    entry.answer,
                    "1" if entry.sampled else "0",
                )
            try:
                await script(args=args)
            except BaseException:
                self._pending.extendleft(reversed(batch))
                overflow = len(self._pending) - self.buffer_size
                for _ in range(max(0, overflow)):
                    self._pending.popleft()
                self.stats.dropped_redis_error += max(0, overflow)
                raise
            written += len(batch)
            self.stats.written += len(batch)
        return written


# ARGV = stream, maxlen, then 7 values per entry in entry_fields' order.
_FLUSH_LUA = """
local stream, maxlen = ARGV[1], ARGV[2]
for i = 3, #ARGV, 7 do
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
    'deployment', ARGV[i], 'version', ARGV[i + 1], 'arm', ARGV[i + 2], 'id', ARGV[i + 3],
    'ts', ARGV[i + 4], 'answer', ARGV[i + 5], 'sampled', ARGV[i + 6])
end
return #ARGV
"""
