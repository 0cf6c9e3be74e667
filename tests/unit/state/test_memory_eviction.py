"""A flood of new rate-limit keys cannot reset a bucket that is in use."""

from __future__ import annotations

from gateway.clock import FakeClock
from gateway.state.memory import MemoryStore


def test_a_flood_of_new_keys_does_not_refill_an_active_tenant() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, capacity=4)
    # the tenant drains its bucket
    for _ in range(5):
        store.take_now("tenant", rate=1.0, burst=5.0)
    assert not store.take_now("tenant", rate=1.0, burst=5.0).allowed
    # a client invents a thousand keys
    invented = [store.take_now(f"k{i}", rate=1.0, burst=5.0) for i in range(1000)]
    # the tenant is still empty: its bucket was not evicted and recreated full
    assert not store.take_now("tenant", rate=1.0, burst=5.0).allowed
    # the invented keys shared one bucket once the table was full: they throttled themselves
    assert sum(r.allowed for r in invented) <= 3 + 5


def test_refilled_buckets_make_room_for_new_keys() -> None:
    clock = FakeClock()
    store = MemoryStore(clock, capacity=2)
    store.take_now("a", rate=10.0, burst=1.0)
    store.take_now("b", rate=10.0, burst=1.0)
    clock.advance(1.0)  # both refilled: evicting either loses nothing
    assert store.take_now("c", rate=10.0, burst=1.0).allowed
    assert store.take_now("d", rate=10.0, burst=1.0).allowed
    # "d" has its own bucket, not the shared overflow one: "c" is unaffected
    assert not store.take_now("c", rate=10.0, burst=1.0).allowed
