"""An optional in-process rate limit per credit-API client: a token bucket per source.

It is per process: behind a load balancer with N instances a client gets up to N times the limit, so
the edge (nginx ``limit_req``, see the README) stays the real guard; this one protects a single instance
from one misbehaving client.
"""

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait_needed(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else the seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0
