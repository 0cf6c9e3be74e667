"""The Redis store against a real redis-server: atomic buckets, TTLs, pub/sub, and loss."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

from gateway.clock import MonotonicClock
from gateway.errors import StoreUnavailable
from gateway.state.redis import MAX_CONNECTIONS, RedisStore
from gateway.telemetry.catalog import Metrics
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


def store_for(url: str, **kw: float) -> RedisStore:
    prefix = f"t{os.urandom(4).hex()}:"
    return RedisStore(url, clock=MonotonicClock(), metrics=Metrics(), prefix=prefix, **kw)


async def test_get_set_and_lease(redis_url: str) -> None:
    store = store_for(redis_url, timeout=0.5)
    try:
        assert await store.get("k") is None
        await store.set("k", b"\x00\xffvalue", ttl=30)
        assert await store.get("k") == b"\x00\xffvalue"
        assert await store.hold_lease("lease", b"a", 30)
        assert not await store.hold_lease("lease", b"b", 30)
        assert await store.hold_lease("lease", b"a", 30)  # extended by its holder
        # replicas racing for a free lease: exactly one wins
        won = await asyncio.gather(*(store.hold_lease("race", bytes([i]), 30) for i in range(20)))
        assert sum(won) == 1
    finally:
        await store.close()


async def test_token_bucket_is_one_budget_for_concurrent_takers(redis_url: str) -> None:
    a, b = store_for(redis_url, timeout=2.0), store_for(redis_url, timeout=2.0)
    b._prefix = a._prefix  # two replicas, one key space
    try:
        # a very slow refill: only the burst can pass, however the takes interleave
        results = await asyncio.gather(
            *(s.take("bucket", rate=0.001, burst=25) for _ in range(40) for s in (a, b))
        )
        assert sum(r.allowed for r in results) == 25
        refused = [r for r in results if not r.allowed]
        assert all(r.retry_after > 0 for r in refused)
    finally:
        await a.close()
        await b.close()


async def test_published_messages_reach_subscribers(redis_url: str) -> None:
    pub, sub = store_for(redis_url, timeout=0.5), store_for(redis_url, timeout=0.5)
    sub._prefix = pub._prefix
    got: asyncio.Queue[bytes] = asyncio.Queue()
    sub.subscribe("events", got.put_nowait)
    await sub.start()
    try:
        for _ in range(100):  # the subscription is set up asynchronously
            await pub.publish("events", b"hello")
            try:
                assert await asyncio.wait_for(got.get(), 0.05) == b"hello"
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no message arrived")
    finally:
        await pub.close()
        await sub.close()


async def test_a_dead_redis_fails_fast_then_recovers(redis_server: RedisServer) -> None:
    store = store_for(redis_server.url, timeout=0.2, retry_after=0.3)
    metrics = store._m
    try:
        await store.set("k", b"v", 60)
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        assert not store.available()
        # while marked down, calls do not touch the network at all
        with pytest.raises(StoreUnavailable, match="skipped"):
            await store.take("b", 1.0, 1.0)
        assert metrics.store_up.labels("redis")._value.get() == 0
        redis_server.start()
        for _ in range(100):
            if store.available():
                break
            await asyncio.sleep(0.02)
        assert (await store.take("b", 1.0, 1.0)).allowed
        assert metrics.store_up.labels("redis")._value.get() == 1
    finally:
        await store.close()


async def test_subscriptions_come_back_after_redis_restarts(redis_server: RedisServer) -> None:
    pub = store_for(redis_server.url, timeout=0.5, retry_after=0.1)
    sub = store_for(redis_server.url, timeout=0.5, retry_after=0.1)
    sub._prefix = pub._prefix
    got: asyncio.Queue[bytes] = asyncio.Queue()
    sub.subscribe("events", got.put_nowait)
    await sub.start()

    async def delivered(message: bytes) -> bool:
        for _ in range(200):  # subscribing again happens in the background
            with contextlib.suppress(StoreUnavailable):
                await pub.publish("events", message)
            try:
                while (await asyncio.wait_for(got.get(), 0.05)) != message:
                    pass
                return True
            except TimeoutError:
                continue
        return False

    try:
        assert await delivered(b"before")
        redis_server.stop()
        redis_server.start()
        assert await delivered(b"after")
        assert sub._subscriber is not None and not sub._subscriber.done()
    finally:
        await pub.close()
        await sub.close()


async def test_a_burst_larger_than_the_pool_waits_instead_of_marking_redis_down(
    redis_url: str,
) -> None:
    store = store_for(redis_url, timeout=2.0)
    try:
        results = await asyncio.gather(
            *(store.take(f"burst{i}", 100.0, 10.0) for i in range(MAX_CONNECTIONS + 150)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []
        assert store.available()
        assert store._m.store_up.labels("redis")._value.get() == 1
    finally:
        await store.close()


async def test_cancelled_calls_do_not_hand_a_stale_reply_to_the_next_caller(
    redis_url: str,
) -> None:
    store = store_for(redis_url, timeout=2.0)
    try:
        for i in range(20):
            await store.set(f"k{i}", f"v{i}".encode(), ttl=30)
        for round_ in range(20):
            # cancel calls at every stage: before sending, after sending, while reading
            tasks = [asyncio.ensure_future(store.get(f"k{i}")) for i in range(20)]
            for _ in range(round_ % 4):
                await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            values = await asyncio.gather(*(store.get(f"k{i}") for i in range(20)))
            assert values == [f"v{i}".encode() for i in range(20)]
        assert store.available()
    finally:
        await store.close()


async def test_the_lua_bucket_refills_caps_at_burst_and_expires(redis_url: str) -> None:
    store = store_for(redis_url, timeout=0.5)
    try:
        big = await store.take("b", rate=100.0, burst=5.0, cost=6.0)
        assert not big.allowed and big.retry_after == float("inf")
        assert [(await store.take("b", 100.0, 5.0)).allowed for _ in range(5)] == [True] * 5
        await asyncio.sleep(0.1)  # 10 tokens' worth of time: the bucket holds 5 at most
        t0 = time.monotonic()
        taken = [(await store.take("b", 100.0, 5.0)).allowed for _ in range(8)]
        refilled = 100.0 * (time.monotonic() - t0)  # tokens' worth of time the calls took
        # 5 (the cap, not the 10 the wait was worth), plus what refilled during the calls
        assert 5 <= taken.count(True) <= 5 + int(refilled) + 1, (taken, refilled)
        ttl = await store._redis.pttl(store._prefix + "b")
        assert 0 < ttl <= 5 / 100 * 1000 + 1000
    finally:
        await store.close()


async def test_counter_shares_sum_across_stores_are_idempotent_and_expire(
    redis_url: str,
) -> None:
    a, b = store_for(redis_url, timeout=2.0), store_for(redis_url, timeout=2.0)
    a._prefix = b._prefix = f"cnt{os.urandom(4).hex()}:"
    try:
        # two replicas writing their shares at once, each many times over: the sums hold
        # each share once, however often it was sent
        await asyncio.gather(
            *(
                s.put_counts([("k", 10 * n), ("j", 20 * n)], member, ttl=5.0)
                for s, member, n in ((a, "one", 1), (b, "two", 2))
                for _ in range(20)
            )
        )
        assert await a.sum_counts(["k", "j", "none"]) == [30, 60, 0]
        assert await b.put_counts([("k", 25)], "two", ttl=0.2) == [35]
        await asyncio.sleep(0.3)
        assert await a.sum_counts(["k", "j"]) == [0, 60]
        # a field the gateway did not write counts as nothing
        await a._redis.hset(a.key("j"), "junk", "not a number")
        assert await b.sum_counts(["j"]) == [60]
    finally:
        await a.close()
        await b.close()
