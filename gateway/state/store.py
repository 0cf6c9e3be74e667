"""The state store seam: what replicas may share, and how a caller learns it cannot.

Two implementations: `MemoryStore` (the embedded default; nothing shared, nothing to
install) and `RedisStore` (shared by every replica that points at the same Redis).
Callers treat the store as optional help, never as a dependency of the request: every
call may raise `StoreUnavailable`, and each caller has a local answer ready (a cache
miss, the local token bucket, no peer news). `available()` is a cheap check that lets a
caller skip a store known to be down without paying its timeout on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

MessageHandler = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class TakeResult:
    """A token-bucket answer: taken or not, what is left, and how long until it would be."""

    allowed: bool
    remaining: float
    retry_after: float


class StateStore(Protocol):
    """Keys, TTLs, atomic token buckets and a broadcast channel.

    Every coroutine raises `gateway.errors.StoreUnavailable` when the store cannot answer
    within its timeout; none raises anything else.
    """

    @property
    def kind(self) -> str: ...

    @property
    def shared(self) -> bool:
        """True when other replicas see what this one writes."""
        ...

    def available(self) -> bool:
        """False while the store is known to be down: skip it and use local state."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def hold_lease(self, key: str, owner: bytes, ttl: float) -> bool:
        """Take the lease `key` for `owner`, or extend it when `owner` already holds it.

        Atomic: of several replicas asking at once, exactly one holds it afterwards. False
        when another owner holds a live lease.
        """
        ...

    async def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> TakeResult:
        """Take `cost` tokens from the bucket `key` atomically (refilled at `rate` per second)."""
        ...

    async def put_counts(
        self, items: Sequence[tuple[str, int]], member: str, ttl: float
    ) -> list[int]:
        """Set `member`'s share of each counter key; returns each key's sum over all members.

        Idempotent: a member writes its absolute count, so sending the same items again
        (after a reply was lost) changes nothing. Each key expires `ttl` seconds after its
        last write. Atomic. The keys of one call must share a hash tag (`{tag}` in each
        name) so that a Redis Cluster holds them in one slot.
        """
        ...

    async def sum_counts(self, keys: Sequence[str]) -> list[int]:
        """Each key's sum over all members, 0 for a missing one, in order (one round trip).

        The keys of one call must share a hash tag, as for `put_counts`.
        """
        ...

    async def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call `handler` with every message later published on `channel` by any replica.

        Delivery is best effort: messages published while the store is down are lost.
        """
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
