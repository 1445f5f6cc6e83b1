"""A token bucket per deployment: at most ``per_s`` a second on average, bursts of ``burst``.

The payload sampler (a cap on samples) and the prediction log (full logging up to a rate)
both ask it once per request; it is a dict lookup and a little arithmetic, no lock (one event
loop per gateway process).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class DeploymentRates:
    def __init__(
        self, *, per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s = per_s
        self.burst = max(1.0, burst)
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # deployment -> [tokens, last refill]

    def take(self, deployment: str) -> bool:
        """Spend a token of ``deployment``'s bucket; False when it has none left."""
        now = self._clock()
        bucket = self._buckets.get(deployment)
        if bucket is None:
            bucket = self._buckets[deployment] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_s)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True
