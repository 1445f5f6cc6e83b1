"""Sampled copies of prediction inputs and outputs, for drift detection.

Redis layout
------------
``modelyard:samples:{deployment}`` (stream, one per deployment, capped with
``XADD ... MAXLEN ~ stream_maxlen``; the ``~`` lets Redis trim whole nodes, so the stream may hold
up to about 100 entries more than the cap). Fields of each entry, all strings:

- ``version``: model version that answered
- ``api``: the API called (``predict``)
- ``ts``: unix time (s, 3 decimals) the answer was received
- ``inputs``: the request body as JSON, with every top-level list (``instances``) cut to
  ``max_rows`` rows
- ``outputs``: the answer as JSON, its top-level lists (or itself, if a list) cut the same way
- ``rows``: how many rows the request had before the cut

Only 2xx answers are sampled (an error body says nothing about the input distribution). An
entry whose JSON would still exceed ``max_field_bytes`` after the cut is left out and counted.

On the request path :meth:`PayloadSampler.offer` only draws a random number and appends
references to a bounded deque; the JSON encoding and the XADDs happen in
:meth:`PayloadSampler.flush`, called by a background loop. When the deque is full, or Redis is
unreachable, samples are dropped and counted: sampling must never slow a prediction down or hold
memory without bound.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger(__name__)

SAMPLES_KEY_PREFIX = "modelyard:samples:"


def samples_key(deployment: str) -> str:
    """Return the stream key that holds ``deployment``'s samples."""
    return f"{SAMPLES_KEY_PREFIX}{deployment}"


def truncate_rows(payload: Any, max_rows: int) -> Any:
    """Cut a list, or every top-level list of a dict, to ``max_rows`` items."""
    if isinstance(payload, list):
        return payload[:max_rows]
    if isinstance(payload, dict):
        return {
            name: value[:max_rows] if isinstance(value, list) else value
            for name, value in payload.items()
        }
    return payload


@dataclass(slots=True)
class _Pending:
    deployment: str
    version: int
    api: str
    ts: float
    rows: int
    inputs: dict[str, Any]
    outputs: bytes


@dataclass(slots=True)
class SamplerStats:
    offered: int = 0
    sampled: int = 0
    written: int = 0
    dropped_buffer_full: int = 0
    dropped_redis_error: int = 0
    dropped_unusable: int = 0  # answer not JSON, or too large even after the row cut


class PayloadSampler:
    """Bounded buffer of sampled requests plus the flush that writes them to Redis streams."""

    def __init__(
        self,
        *,
        rate: float,
        max_rows: int,
        buffer_size: int,
        stream_maxlen: int,
        max_field_bytes: int = 256 * 1024,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate must be within [0, 1], got {rate!r}")
        if max_rows < 1 or buffer_size < 1 or stream_maxlen < 1:
            raise ValueError(
                "sample max_rows, buffer_size and stream_maxlen must be >= 1, got "
                f"{max_rows}, {buffer_size}, {stream_maxlen}"
            )
        self.rate = rate
        self.max_rows = max_rows
        self.buffer_size = buffer_size
        self.stream_maxlen = stream_maxlen
        self.max_field_bytes = max_field_bytes
        self._random = (rng or random.Random()).random
        self._pending: deque[_Pending] = deque()
        self.stats = SamplerStats()

    def offer(
        self,
        *,
        deployment: str,
        version: int,
        api: str,
        rows: int,
        inputs: dict[str, Any],
        outputs: bytes,
    ) -> bool:
        """Maybe keep this request for the next flush; never blocks. True if kept."""
        self.stats.offered += 1
        if self.rate <= 0.0 or self._random() >= self.rate:
            return False
        if len(self._pending) >= self.buffer_size:
            self.stats.dropped_buffer_full += 1
            return False
        self.stats.sampled += 1
        # References only: the request is done with both objects, so no copy is needed.
        self._pending.append(
            _Pending(deployment, version, api, round(time.time(), 3), rows, inputs, outputs)
        )
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _encode(self, item: _Pending) -> dict[str, str] | None:
        try:
            outputs = json.loads(item.outputs)
        except (ValueError, UnicodeDecodeError):
            return None
        inputs_json = json.dumps(truncate_rows(item.inputs, self.max_rows), separators=(",", ":"))
        outputs_json = json.dumps(truncate_rows(outputs, self.max_rows), separators=(",", ":"))
        if len(inputs_json) > self.max_field_bytes or len(outputs_json) > self.max_field_bytes:
            return None
        return {
            "version": str(item.version),
            "api": item.api,
            "ts": f"{item.ts:.3f}",
            "rows": str(item.rows),
            "inputs": inputs_json,
            "outputs": outputs_json,
        }

    async def flush(self, client: redis.asyncio.Redis, *, batch_size: int = 64) -> int:
        """Write buffered samples to their streams (in batches); return how many were written.

        Small batches: redis-py spends ~20 µs of event-loop time per XADD (packing the command,
        parsing the reply), so a batch of 500 would stall requests for ~10 ms at once.
        """
        written = 0
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(batch_size, len(self._pending)))]
            # No MULTI: samples are independent and best-effort, a partial batch is fine.
            pipe = client.pipeline(transaction=False)
            queued = 0
            for item in batch:
                fields = self._encode(item)
                if fields is None:
                    self.stats.dropped_unusable += 1
                    continue
                pipe.xadd(
                    samples_key(item.deployment),
                    fields,  # type: ignore[arg-type]
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
                queued += 1
            if not queued:
                continue
            try:
                await pipe.execute()
            except BaseException:
                # Samples are not worth retrying (new ones keep coming); count and move on.
                self.stats.dropped_redis_error += queued
                raise
            finally:
                await pipe.reset()
            written += queued
            self.stats.written += queued
        return written
