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

A body with no list to cut is stored as the bytes that came over the wire (``_encode``):
re-encoding it cost ~13 µs a sample and gave the same JSON value. Readers must therefore parse
the JSON (as monitoring's ``samples_read`` does) and not compare the text: a body sent with
spaces keeps them. A cut body is re-encoded compactly (``json.dumps`` with ``(",", ":")``).

Only 2xx answers are sampled (an error body says nothing about the input distribution). An
entry whose JSON would still exceed ``max_field_bytes`` after the cut is left out and counted,
as is an answer that is not a JSON object or array.

Besides the rate, a per-deployment cap (``max_per_s``, a token bucket holding a minute's worth,
so bursts and light traffic are kept whole) bounds what is written. The stream holds at most
``stream_maxlen`` entries and a drift window reads a span of it (an hour by default): at 1,000
req/s a 10 % sample filled 10,000 entries in 100 s, so a closed hourly window saw only its last
minutes, while every sample past that cost CPU on the request path and in the flush for
nothing. The cap should be at most ``stream_maxlen`` / window length / gateway processes.

On the request path the gateway calls :meth:`PayloadSampler.draw` (a random number) and, for
the drawn requests, :meth:`PayloadSampler.keep`, which appends
references to a bounded deque; the encoding and the writes happen in
:meth:`PayloadSampler.flush`, called by a background loop: one Lua script call per batch that
XADDs every entry (``MAXLEN ~ stream_maxlen``). A batch whose call fails goes back to the front
of the deque, in order, for the next flush. Only when the deque is full are samples dropped and
counted: sampling must never slow a prediction down or hold memory without bound.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.inputs import json_loads
from gateway.rates import DeploymentRates

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

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


def _needs_cut(payload: Any, max_rows: int) -> bool:
    """True if :func:`truncate_rows` would change ``payload`` (a parsed JSON value)."""
    if isinstance(payload, list):
        return len(payload) > max_rows
    if isinstance(payload, dict):
        return any(isinstance(value, list) and len(value) > max_rows for value in payload.values())
    return False


@dataclass(slots=True)
class _Pending:
    deployment: str
    version: int
    api: str
    ts: float
    rows: int
    inputs: dict[str, Any]  # the parsed request body (the request path parsed it anyway)
    raw_inputs: bytes | None  # ... and its bytes as received, when the caller has them
    outputs: bytes


@dataclass(slots=True)
class SamplerStats:
    sampled: int = 0
    written: int = 0
    dropped_buffer_full: int = 0
    dropped_redis_error: int = 0
    dropped_unusable: int = 0  # answer not JSON, or too large even after the row cut
    over_rate_cap: int = 0  # drawn, but the deployment's samples per second were used up


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
        max_per_s: float = 0.0,
        rng: random.Random | None = None,
        clock: Any = time.monotonic,
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
        # Samples per second per deployment (0: no cap), from a bucket of a minute's worth.
        self.max_per_s = max_per_s
        self._rates = DeploymentRates(per_s=max_per_s, burst=60.0 * max_per_s, clock=clock)
        self._random = (rng or random.Random()).random
        self._pending: deque[_Pending] = deque()
        self._script: AsyncScript | None = None
        self.stats = SamplerStats()

    def draw(self) -> bool:
        """Whether to sample this request: one random draw at ``rate`` (request path; the
        gateway calls it for every answer, so it is kept to a draw and a comparison)."""
        return self._random() < self.rate  # random() is in [0, 1): rate 0 never samples

    def offer(self, *args: Any, **kwargs: Any) -> bool:
        """:meth:`draw`, then :meth:`keep` (same arguments) if drawn; True if kept."""
        return self.draw() and self.keep(*args, **kwargs)

    def keep(
        self,
        deployment: str,
        version: int,
        api: str,
        rows: int,
        inputs: dict[str, Any],
        outputs: bytes,
        raw_inputs: bytes | None = None,
    ) -> bool:
        """Keep a drawn request for the next flush unless its deployment is over the rate cap
        or the buffer is full; never blocks. True if kept.

        ``raw_inputs`` is the request body ``inputs`` was parsed from; when given, it is stored
        as is unless rows must be cut (no re-encoding). Without it ``inputs`` is encoded.
        """
        if self.max_per_s > 0.0 and not self._rates.take(deployment):
            self.stats.over_rate_cap += 1
            return False
        if len(self._pending) >= self.buffer_size:
            self.stats.dropped_buffer_full += 1
            return False
        self.stats.sampled += 1
        # References only: the request is done with both objects, so no copy is needed.
        self._pending.append(
            _Pending(
                deployment, version, api, round(time.time(), 3), rows, inputs, raw_inputs, outputs
            )
        )
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _encode(self, item: _Pending) -> bytes | None:
        """The script argument of one entry (see ``_FLUSH_LUA``), or None if unusable.

        Parses and re-encodes only what has a list to cut. The request body was parsed on the
        request path, so whether it needs a cut is a look at its top-level values. The answer
        was not: a top-level list of more than ``max_rows`` items takes at least
        ``2 * max_rows + 3`` bytes (``[0,0,...]``), so a shorter answer cannot need a cut and
        is not parsed. Answers must be a JSON object or array (a scalar holds no predictions to
        compare); a short one is only checked to start like one, since a full check would cost
        the parse this skips -- the reader skips an entry it cannot parse.
        """
        max_rows = self.max_rows
        inputs: str | bytes | None = item.raw_inputs
        if inputs is None or _needs_cut(item.inputs, max_rows):
            inputs = json.dumps(truncate_rows(item.inputs, max_rows), separators=(",", ":"))
        outputs: str | bytes = item.outputs
        if len(outputs) <= 2 * max_rows + 2:
            if outputs.lstrip()[:1] not in (b"{", b"["):
                return None
        else:
            try:
                parsed = json_loads(outputs)  # stdlib's answer, ~5x faster
            except (ValueError, UnicodeDecodeError):
                return None
            if not isinstance(parsed, (dict, list)):
                return None
            if _needs_cut(parsed, max_rows):
                outputs = json.dumps(truncate_rows(parsed, max_rows), separators=(",", ":"))
        if len(inputs) > self.max_field_bytes or len(outputs) > self.max_field_bytes:
            return None
        if "\n" in item.deployment or "\n" in item.api:
            return None  # would break the entry's head (the gateway's names never hold one)
        if isinstance(inputs, str):
            inputs = inputs.encode()
        if isinstance(outputs, str):
            outputs = outputs.encode()
        # One script argument per entry: redis-py packs every argument on its own (~0.3 µs
        # each), and 7 per entry were a third of the flush. _FLUSH_LUA splits it again.
        head = (
            f"{SAMPLES_KEY_PREFIX}{item.deployment}\n{item.version}\n{item.api}\n"
            f"{item.ts:.3f}\n{item.rows}\n{len(inputs)}\n"
        )
        return b"".join((head.encode(), inputs, outputs))

    def _restore(self, batch: list[_Pending]) -> None:
        """Put a batch whose write failed back in front, in order, within ``buffer_size``."""
        self._pending.extendleft(reversed(batch))
        overflow = len(self._pending) - self.buffer_size
        if overflow > 0:
            # The oldest go, as MAXLEN would trim them first from the stream anyway.
            for _ in range(overflow):
                self._pending.popleft()
            self.stats.dropped_redis_error += overflow

    async def flush(self, client: redis.asyncio.Redis, *, batch_size: int = 64) -> int:
        """Write buffered samples to their streams (in batches); return how many were written.

        One script call per batch: one XADD command per sample cost ~25 µs of event-loop time
        in redis-py (packing, reply parsing), plus ~13 µs of JSON round trip; now a sample
        costs ~5 µs all told (tests/benchmarks/test_gateway_monitoring_bench.py). Batches stay
        small so one call never stalls requests for long.

        A failed call leaves its batch and everything after it in the buffer, in order. A call
        that timed out after Redis ran it is written again next time: a duplicate sample is
        harmless for drift statistics, a lost one is not wanted.
        """
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_FLUSH_LUA)  # EVALSHA, loads it if missing
        script = self._script
        written = 0
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(batch_size, len(self._pending)))]
            args: list[bytes | int] = [self.stream_maxlen]
            kept: list[_Pending] = []
            for item in batch:
                entry = self._encode(item)
                if entry is None:
                    self.stats.dropped_unusable += 1
                    continue
                args.append(entry)
                kept.append(item)
            if not kept:
                continue
            try:
                refused = await script(args=args)
            except BaseException:
                self._restore(kept)
                raise
            # Entries Redis itself refused (a key of another type): retrying cannot help.
            refused = int(refused)
            self.stats.dropped_redis_error += refused
            written += len(kept) - refused
            self.stats.written += len(kept) - refused
        return written


# ARGV = maxlen, then one argument per entry: key, version, api, ts, rows and the length of
# inputs, each ended by a newline (none of them can hold one: ``_encode`` refuses names with
# one, and the gateway's name patterns never let one through), then inputs and outputs back
# to back. The fields are
# written in the order the stream has always had. Stream keys travel in ARGV because their
# number varies (see the metrics flush script). pcall, and a malformed entry only counted: one
# bad entry must not stop the rest of the batch, and a script that raised halfway would have
# written its first entries without saying so.
_FLUSH_LUA = """
local maxlen = ARGV[1]
local refused = 0
local head = '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n(%d+)\\n()'
for i = 2, #ARGV do
  local entry = ARGV[i]
  local key, version, api, ts, rows, n, at = string.match(entry, head)
  local ok = nil
  if key then
    n = tonumber(n)
    ok = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, '*',
      'version', version, 'api', api, 'ts', ts, 'rows', rows,
      'inputs', string.sub(entry, at, at + n - 1), 'outputs', string.sub(entry, at + n))
  end
  if not key or (type(ok) == 'table' and ok.err) then
    refused = refused + 1
  end
end
return refused
"""
