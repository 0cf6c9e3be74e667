"""The Redis store against a real redis-server: atomic buckets, TTLs, pub/sub, and loss."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.clock import MonotonicClock
from gateway.errors import StoreUnavailable
from gateway.state.redis import RedisStore
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
        assert await store.set_if_absent("lease", b"a", 30)
        assert not await store.set_if_absent("lease", b"b", 30)
    finally:
        await store.close()


async def test_token_bucket_is_one_budget_for_concurrent_takers(redis_url: str) -> None:
    a, b = store_for(redis_url, timeout=0.5), store_for(redis_url, timeout=0.5)
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
