"""The embedded state store: one process, nothing to install, nothing shared.

Bounded like everything else on the request path: keys and token buckets live in LRU
maps with a fixed capacity, so a flood of distinct rate-limit keys (one per client IP)
cannot grow the process without limit.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar

from gateway.clock import Clock
from gateway.resilience.admission import TokenBucket
from gateway.state.store import MessageHandler, TakeResult

DEFAULT_CAPACITY = 100_000
K = TypeVar("K")
V = TypeVar("V")


class MemoryStore:
    """In-process keys with TTLs, token buckets and a local broadcast."""

    kind = "memory"
    shared = False

    def __init__(self, clock: Clock, capacity: int = DEFAULT_CAPACITY) -> None:
        self._clock = clock
        self._capacity = capacity
        self._values: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, float, float], TokenBucket] = OrderedDict()
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._shares: OrderedDict[str, tuple[float, dict[str, int]]] = OrderedDict()

    def available(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock.now():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._values[key] = (self._clock.now() + ttl, value)
        self._values.move_to_end(key)
        _trim(self._values, self._capacity)

    async def hold_lease(self, key: str, owner: bytes, ttl: float) -> bool:
        holder = await self.get(key)
        if holder is not None and holder != owner:
            return False
        await self.set(key, owner, ttl)
        return True

    async def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> TakeResult:
        return self.take_now(key, rate, burst, cost)

    def take_now(self, key: str, rate: float, burst: float, cost: float = 1.0) -> TakeResult:
        """`take` without the coroutine, for callers that use this store as the local fallback."""
        # a reload that changes the rate starts a fresh bucket rather than mixing two rates
        bkey = (key, rate, burst)
        now = self._clock.now()
        buckets = self._buckets
        bucket = buckets.get(bkey)
        if bucket is None:
            if len(buckets) >= self._capacity and not self._evict_full(now):
                # Every bucket in the table still remembers recent use: evicting one would
                # hand that caller a full bucket again. New keys then share one bucket, so a
                # flood of made-up keys throttles itself, not the callers already known.
                bkey = (OVERFLOW_KEY, rate, burst)
                bucket = buckets.get(bkey)
            if bucket is None:
                bucket = buckets[bkey] = TokenBucket(rate, burst)
        else:
            buckets.move_to_end(bkey)
        wait = bucket.try_take(now, cost)
        return TakeResult(wait == 0.0, bucket.tokens(now), wait)

    def _evict_full(self, now: float) -> bool:
        """Drop the least recently used bucket if it has refilled (it then holds nothing a
        new bucket would not); looks at a few of the oldest, never the whole table."""
        buckets = self._buckets
        for bkey in list(itertools.islice(buckets, EVICTION_SCAN)):
            if bkey[0] != OVERFLOW_KEY and buckets[bkey].tokens(now) >= buckets[bkey].burst:
                del buckets[bkey]
                return True
        return False

    async def put_counts(
        self, items: Sequence[tuple[str, int]], member: str, ttl: float
    ) -> list[int]:
        out = []
        expires = self._clock.now() + ttl
        for key, count in items:
            shares = self._live_shares(key) or {}
            shares[member] = count
            self._shares[key] = (expires, shares)
            self._shares.move_to_end(key)
            out.append(sum(shares.values()))
        _trim(self._shares, self._capacity)
        return out

    async def sum_counts(self, keys: Sequence[str]) -> list[int]:
        return [sum((self._live_shares(key) or {}).values()) for key in keys]

    def _live_shares(self, key: str) -> dict[str, int] | None:
        item = self._shares.get(key)
        if item is None:
            return None
        if item[0] <= self._clock.now():
            del self._shares[key]
            return None
        return item[1]

    async def publish(self, channel: str, message: bytes) -> None:
        # one process has no peers; local subscribers already know what they published
        return None

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()


def _trim(lru: OrderedDict[K, V], capacity: int) -> None:
    while len(lru) > capacity:
        lru.popitem(last=False)


# How many of the least recently used buckets a new key may look at for one to evict.
EVICTION_SCAN = 8
# The bucket new keys share while every known bucket is still in use.
OVERFLOW_KEY = "\0overflow"

__all__ = ["DEFAULT_CAPACITY", "EVICTION_SCAN", "OVERFLOW_KEY", "MemoryStore"]
