"""The embedded store: TTLs, LRU bounds and token buckets on a fake clock."""

from __future__ import annotations

import math

from gateway.clock import FakeClock
from gateway.state.memory import MemoryStore


async def test_values_expire_after_their_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    await store.set("k", b"v", ttl=2.0)
    assert await store.get("k") == b"v"
    clock.advance(1.999)
    assert await store.get("k") == b"v"
    clock.advance(0.002)
    assert await store.get("k") is None


async def test_a_lease_is_held_extended_and_passed_on_after_its_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    assert await store.hold_lease("lease", b"a", ttl=5.0)
    assert not await store.hold_lease("lease", b"b", ttl=5.0)
    clock.advance(4.0)
    assert await store.hold_lease("lease", b"a", ttl=5.0)  # extended by its holder
    clock.advance(4.0)
    assert not await store.hold_lease("lease", b"b", ttl=5.0)
    clock.advance(1.0)
    assert await store.hold_lease("lease", b"b", ttl=5.0)
    assert await store.get("lease") == b"b"


async def test_capacity_evicts_the_least_recently_used() -> None:
    store = MemoryStore(FakeClock(), capacity=2)
    await store.set("a", b"1", 60)
    await store.set("b", b"2", 60)
    assert await store.get("a") == b"1"  # a is now the most recent
    await store.set("c", b"3", 60)
    assert await store.get("b") is None
    assert await store.get("a") == b"1"
    assert await store.get("c") == b"3"


async def test_token_bucket_allows_burst_then_rate() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    results = [await store.take("t", rate=10.0, burst=5.0) for _ in range(7)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert math.isclose(results[-1].retry_after, 0.1)
    clock.advance(0.25)  # 2.5 tokens refilled
    assert [(await store.take("t", 10.0, 5.0)).allowed for _ in range(3)] == [True, True, False]


async def test_buckets_are_per_key_and_a_new_rate_starts_fresh() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    for _ in range(3):
        await store.take("a", 1.0, 3.0)
    assert not (await store.take("a", 1.0, 3.0)).allowed
    assert (await store.take("b", 1.0, 3.0)).allowed
    assert (await store.take("a", 2.0, 3.0)).allowed  # a reload changed the rate


async def test_a_cost_above_burst_can_never_pass() -> None:
    store = MemoryStore(FakeClock())
    r = await store.take("t", 1.0, 2.0, cost=3.0)
    assert not r.allowed and r.retry_after == math.inf


async def test_counters_sum_each_members_share_and_expire_after_their_last_write() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    assert await store.put_counts([("a", 2), ("b", 0)], "r1", ttl=10.0) == [2, 0]
    assert await store.put_counts([("a", 3)], "r2", ttl=10.0) == [5]
    # a share written again (its reply was lost) is not counted twice
    assert await store.put_counts([("a", 3)], "r2", ttl=10.0) == [5]
    assert await store.sum_counts(["a", "b", "missing"]) == [5, 0, 0]
    clock.advance(9.0)
    assert await store.put_counts([("a", 4)], "r1", ttl=10.0) == [7]
    clock.advance(9.0)
    assert await store.sum_counts(["a", "b"]) == [7, 0]
    clock.advance(1.5)
    assert await store.sum_counts(["a"]) == [0]
