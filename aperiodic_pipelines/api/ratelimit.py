"""A token bucket per API key: `rate` requests per second on average, bursts up to `burst`."""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, last refill, monotonic)
        self._lock = threading.Lock()

    def acquire(self, name: str, *, now: float | None = None) -> int:
        """Take one token for `name`: 0 when allowed, else the whole seconds until a token is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0
            self._buckets[name] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
