"""A token bucket per client, in this process's memory (each server instance counts alone).

A client may make `burst` requests at once, then one every 60 / `per_minute` seconds.
Buckets that have filled up again are forgotten once `max_clients` are held, so a
scan from many addresses costs bounded memory (and at worst lets such clients start
with a full bucket again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at_s: float


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        max_clients: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate_per_s = per_minute / 60.0
        self._burst = float(burst)
        self._max_clients = max_clients
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """The clients whose buckets are held."""
        return len(self._buckets)

    def take(self, client: str) -> float:
        """0 if `client` may go on now (a token is taken), else the seconds until it may."""
        now = self._monotonic()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at_s) * self._rate_per_s)
        bucket.at_s = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate_per_s

    def _forget_full(self, now: float) -> None:
        full_after_s = self._burst / self._rate_per_s
        self._buckets = {c: b for c, b in self._buckets.items() if now - b.at_s < full_after_s}
        if len(self._buckets) >= self._max_clients:
            # Every client is active: forget the oldest half rather than grow.
            kept = sorted(self._buckets.items(), key=lambda cb: cb[1].at_s)
            self._buckets = dict(kept[len(kept) // 2 :])
