"""The shared state store on Redis: what replicas agree on, never what a request waits for.

Every command runs under a short timeout (`state.timeout`, a few milliseconds). The first
failure marks the store down for `state.retry_after`; while it is down, calls raise
`StoreUnavailable` at once without touching the network, so a dead or stalled Redis costs
the request path nothing after the first miss. The next call after the pause tries again:
that is the reconnect. Library exceptions are translated here and nowhere else.

Token buckets run as one Lua script (one round trip, atomic, on Redis's own clock so that
replicas with skewed clocks still share one budget). Broadcasts use Redis pub/sub on a
separate connection that has no read timeout and resubscribes after Redis comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.clock import Clock
from gateway.errors import StoreUnavailable
from gateway.state.store import MessageHandler, TakeResult
from gateway.telemetry.catalog import Metrics

log = logging.getLogger("tailguard.state")

# Token bucket: tokens and the time they were counted, refilled on Redis's clock.
# A lease: taken when free, extended by its holder, refused to anyone else; one round trip.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
local allowed = 0
local wait = 0
if tokens + 1e-9 >= cost then
  tokens = math.max(0, tokens - cost)
  allowed = 1
elseif cost > burst then
  wait = -1
else
  wait = (cost - tokens) / rate
end
-- tostring keeps 14 digits: a timestamp would lose everything below 100 microseconds
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.17g', tokens), string.format('%.17g', wait)}
"""

# Connections to Redis per replica; calls beyond this many wait for one to come free.
MAX_CONNECTIONS = 256

# How long the subscriber waits for a message before checking whether it should stop.
_POLL = 1.0


class RedisStore:
    """A `StateStore` on Redis with per-call timeouts and a down-marker."""

    kind = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        metrics: Metrics,
        timeout: float = 0.01,
        retry_after: float = 1.0,
        prefix: str = "tailguard:",
    ) -> None:
        self._url = url
        self._clock = clock
        self._m = metrics
        self._timeout = timeout
        self._retry_after = retry_after
        self._prefix = prefix
        # redis-py retries by default; a retry inside a few-millisecond budget only adds latency.
        # A burst beyond the pool's size waits for a connection (within the call's timeout)
        # instead of failing: a full pool says this replica is busy, not that Redis is down.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=max(timeout * 4, 0.05),
            socket_connect_timeout=max(timeout * 4, 0.05),
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,
            timeout=None,
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._take_script = self._redis.register_script(_TAKE)
        self._lease_script = self._redis.register_script(_LEASE)
        self._down_until = 0.0
        self._was_up = True
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._subscriber: asyncio.Task[None] | None = None
        self._closed = False
        self._started = False
        metrics.store_up.labels(self.kind).set(1)

    # --- health ---------------------------------------------------------------------------

    def available(self) -> bool:
        return self._clock.now() >= self._down_until

    def _failed(self, op: str, err: BaseException) -> StoreUnavailable:
        self._m.store_errors.labels(self.kind, op).inc()
        self._down_until = self._clock.now() + self._retry_after
        if self._was_up:
            self._was_up = False
            self._m.store_up.labels(self.kind).set(0)
            log.warning(
                "state store %s unavailable (%s: %s); serving on local state, retrying in %gs",
                self._safe_url(),
                op,
                type(err).__name__,
                self._retry_after,
            )
        return StoreUnavailable(f"state store {op} failed: {type(err).__name__}")

    def _ok(self) -> None:
        if not self._was_up:
            self._was_up = True
            self._m.store_up.labels(self.kind).set(1)
            log.warning("state store %s is back; shared state resumes", self._safe_url())

    def _check(self, op: str) -> None:
        if self._clock.now() < self._down_until:
            self._m.store_skipped.labels(self.kind, op).inc()
            raise StoreUnavailable(f"state store is down; {op} skipped")

    def _safe_url(self) -> str:
        # never log a password that may be part of the URL
        _, sep, tail = self._url.rpartition("@")
        return f"redis://***@{tail}" if sep else self._url

    # --- keys -----------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        self._check("get")
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._redis.get(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("get", e) from None
        self._ok()
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check("set")
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self._prefix + key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("set", e) from None
        self._ok()

    async def hold_lease(self, key: str, owner: bytes, ttl: float) -> bool:
        self._check("hold_lease")
        try:
            async with asyncio.timeout(self._timeout):
                held = await self._lease_script(
                    keys=[self._prefix + key], args=[owner, max(1, int(ttl * 1000))]
                )
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("hold_lease", e) from None
        self._ok()
        return bool(int(held))

    async def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> TakeResult:
        self._check("take")
        try:
            async with asyncio.timeout(self._timeout):
                allowed, tokens, wait = await self._take_script(
                    keys=[self._prefix + key], args=[rate, burst, cost]
                )
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("take", e) from None
        self._ok()
        w = float(wait)
        return TakeResult(bool(int(allowed)), float(tokens), float("inf") if w < 0 else w)

    # --- counters -------------------------------------------------------------------------

    async def add_counts(self, items: Sequence[tuple[str, int]], ttl: float) -> list[int]:
        if not items:
            return []
        self._check("add_counts")
        ttl_ms = max(1, int(ttl * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                pipe = self._redis.pipeline(transaction=False)
                for key, amount in items:
                    pipe.incrby(self._prefix + key, amount)
                    pipe.pexpire(self._prefix + key, ttl_ms)
                replies = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("add_counts", e) from None
        self._ok()
        return [int(v) for v in replies[::2]]

    async def get_counts(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        self._check("get_counts")
        try:
            async with asyncio.timeout(self._timeout):
                values = await self._redis.mget([self._prefix + k for k in keys])
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("get_counts", e) from None
        self._ok()
        out = []
        for v in values:
            try:
                out.append(int(v) if v is not None else 0)
            except (TypeError, ValueError):
                out.append(0)  # not a counter this gateway wrote: count it as empty
        return out

    # --- broadcast ------------------------------------------------------------------------

    async def publish(self, channel: str, message: bytes) -> None:
        self._check("publish")
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.publish(self._prefix + channel, message)
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed("publish", e) from None
        self._ok()

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        self._handlers.setdefault(self._prefix + channel, []).append(handler)
        if self._started:
            # resubscribe with the new channel list
            if self._subscriber is not None:
                self._subscriber.cancel()
            self._subscriber = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        """Keep one subscription alive across Redis restarts; deliver messages to handlers."""
        while not self._closed:
            client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.subscribe(*self._handlers)
                    while not self._closed:
                        msg = await ps.get_message(timeout=_POLL)
                        if msg is None or msg.get("type") != "message":
                            continue
                        channel = msg["channel"]
                        name = channel.decode() if isinstance(channel, bytes) else str(channel)
                        for handler in self._handlers.get(name, ()):
                            try:
                                handler(msg["data"])
                            except Exception:
                                log.exception("handler for %s failed", name)
            except Exception as e:
                # this loop must outlive anything the library raises: a dead task would mean
                # no peer news until a restart, silently; so log it and subscribe again
                level = logging.DEBUG if isinstance(e, RedisError | OSError) else logging.WARNING
                log.log(level, "subscription to %s lost (%r); resubscribing", self._safe_url(), e)
                await asyncio.sleep(self._retry_after)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        if self._handlers and self._subscriber is None:
            self._subscriber = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        self._closed = True
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
            self._subscriber = None
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()


__all__ = ["RedisStore"]
