"""The shared state store on Redis: what replicas agree on, never what a request waits for.

Every command runs under a short timeout (`state.timeout`, a few milliseconds). The first
failure marks the store down for `state.retry_after`; while it is down, calls raise
`StoreUnavailable` at once without touching the network, so a dead or stalled Redis costs
the request path nothing after the first miss. The next call after the pause tries again:
that is the reconnect. Library exceptions are translated here and nowhere else.

Token buckets run as one Lua script (one round trip, atomic, on Redis's own clock so that
replicas with skewed clocks still share one budget). Broadcasts use Redis pub/sub on a
separate connection that has no read timeout and resubscribes after Redis comes back.

Highly available Redis goes through redis-py's own clients (`gateway/state/target.py` reads
the URL): Sentinel (`redis+sentinel://`) asks the sentinels for the master on every new
connection, so after a failover the first call past the down-marker's pause lands on the
new master; Cluster (`redis+cluster://`) routes each key to its slot's master and relearns
the slot map when a master moves. In a cluster every key carries a hash tag, so each
script's keys stay in one slot. Pub/sub messages reach subscribers on any node in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.clock import Clock
from gateway.errors import StoreUnavailable
from gateway.state.store import MessageHandler, TakeResult
from gateway.state.target import RedisTarget, cluster_key, parse_redis_url
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

# Counters shared as one hash per key, a field per replica holding its absolute count
# (idempotent: a share sent twice is stored once); each returns the keys' sums, summed
# server-side so that reading thousands of buckets is one command, not thousands.
_PUT_COUNTS = """
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local out = {}
for i, k in ipairs(KEYS) do
  redis.call('HSET', k, member, ARGV[i + 2])
  redis.call('PEXPIRE', k, ttl)
  local s = 0
  for _, v in ipairs(redis.call('HVALS', k)) do s = s + (tonumber(v) or 0) end
  out[i] = s
end
return out
"""
_SUM_COUNTS = """
local out = {}
for i, k in ipairs(KEYS) do
  local s = 0
  for _, v in ipairs(redis.call('HVALS', k)) do s = s + (tonumber(v) or 0) end
  out[i] = s
end
return out
"""

# What a call into redis-py can raise when the store fails. redis-py's own errors and the
# socket's, and, mid-reconnect in a cluster, its internals' (an AttributeError from a
# connection whose writer was dropped under a concurrent call): any of them means "the store
# did not answer", never a bug of the request that asked. Cancellation is not an Exception.
_FAILED = (RedisError, OSError, TimeoutError, AttributeError, IndexError, KeyError, TypeError)

# Connections to Redis per replica; calls beyond this many wait for one to come free.
MAX_CONNECTIONS = 256

# How long the subscriber waits for a message before checking whether it should stop.
_POLL = 1.0

# The name every connection gives itself (CLIENT SETNAME): `CLIENT LIST` shows which
# connections are the gateway's, which helps an operator and the leak tests.
CLIENT_NAME = "tailguard"

# Bound on learning a cluster's slot map (CLUSTER SLOTS and COMMAND: a few hundred KiB).
_CLUSTER_MAP_TIMEOUT = 5.0

# Bound on connecting to a sentinel or cluster node outside the request path (subscriber,
# cluster slot map at start).
_CONTROL_TIMEOUT = 1.0


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master-following pool with the blocking pool's wait-for-a-connection.

    redis-py asks the sentinels for the master before every new connection; a burst that
    grows the pool would then pay a sentinel round trip per connection inside a
    few-millisecond budget. This pool keeps the master's address until the store sees a
    failure (`forget_master`), and asks again only then.
    """

    _trusted = False

    async def get_master_address(self) -> Any:
        if self._trusted and self.master_address is not None:
            return self.master_address
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        self._trusted = True
        return address

    def forget_master(self) -> None:
        self._trusted = False


class _Clients:
    """Builds the clients one `RedisTarget` needs, and closes what it built."""

    def __init__(self, target: RedisTarget, timeout: float) -> None:
        self.target = target
        self._socket_timeout = max(timeout * 4, 0.05)
        self._sentinels: list[Sentinel | None] = [None, None]
        self._next_node = 0

    def _auth(self) -> dict[str, Any]:
        t = self.target
        out: dict[str, Any] = {"client_name": CLIENT_NAME}
        if t.username is not None:
            out["username"] = t.username
        if t.password is not None:
            out["password"] = t.password
        if t.tls:
            out["ssl"] = True
        return out

    def _sentinel(self, for_subscriber: bool) -> Sentinel:
        """One `Sentinel` per use, made once: it keeps a connection to each sentinel."""
        i = 1 if for_subscriber else 0
        sentinel = self._sentinels[i]
        if sentinel is None:
            timeout = _CONTROL_TIMEOUT if for_subscriber else self._socket_timeout
            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": Retry(NoBackoff(), 0),
            }
            if self.target.sentinel_password is not None:
                sentinel_kwargs["password"] = self.target.sentinel_password
            sentinel = Sentinel(list(self.target.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
            self._sentinels[i] = sentinel
        return sentinel

    def commands(self) -> Any:
        """The client for keys and scripts: short socket timeouts, no library retries."""
        t = self.target
        # redis-py retries by default; a retry inside a few-millisecond budget only adds
        # latency. A burst beyond the pool's size waits for a connection (within the call's
        # timeout) instead of failing: a full pool says this replica is busy, not that Redis
        # is down.
        common: dict[str, Any] = {
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._socket_timeout,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": MAX_CONNECTIONS,
        }
        if t.mode == "single":
            pool = aioredis.BlockingConnectionPool.from_url(
                t.url, timeout=None, client_name=CLIENT_NAME, **common
            )
            return aioredis.Redis.from_pool(pool)
        if t.mode == "sentinel":
            assert t.service is not None
            return self._sentinel(for_subscriber=False).master_for(
                t.service,
                redis_class=aioredis.Redis,
                connection_pool_class=_BlockingSentinelPool,
                timeout=None,
                db=t.db,
                **common,
                **self._auth(),
            )
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in t.hosts],
            require_full_coverage=False,
            # `retry` (in common) gives one try per call: after a master moves, the next call
            # past the down-marker's pause follows the new slot map
            **common,
            **self._auth(),
        )

    def subscriber(self) -> Any:
        """A fresh client for one pub/sub session: no read timeout, found anew each time."""
        t = self.target
        if t.mode == "single":
            return aioredis.Redis.from_url(
                t.url,
                socket_connect_timeout=_CONTROL_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                client_name=CLIENT_NAME,
            )
        if t.mode == "sentinel":
            assert t.service is not None
            return self._sentinel(for_subscriber=True).master_for(
                t.service,
                redis_class=aioredis.Redis,
                socket_connect_timeout=_CONTROL_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                db=t.db,
                **self._auth(),
            )
        # A cluster broadcasts classic PUBLISH to every node, so one plain connection to any
        # node hears every replica; each session tries the next node named in the URL.
        host, port = t.hosts[self._next_node % len(t.hosts)]
        self._next_node += 1
        return aioredis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=_CONTROL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            **self._auth(),
        )

    def forget_master(self, client: Any) -> None:
        """After a failure, the next connection asks the sentinels again."""
        pool = getattr(client, "connection_pool", None)
        if isinstance(pool, _BlockingSentinelPool):
            pool.forget_master()

    async def close_sentinels(self) -> None:
        for sentinel in self._sentinels:
            for client in sentinel.sentinels if sentinel is not None else ():
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
        self._sentinels = [None, None]


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
        on_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        """`on_change(up, why)` is told when the store goes away or comes back."""
        self._url = url
        self._on_change = on_change
        self._target = parse_redis_url(url)
        self._clients = _Clients(self._target, timeout)
        self._clock = clock
        self._m = metrics
        self._timeout = timeout
        self._retry_after = retry_after
        self._prefix = prefix
        self._redis = self._clients.commands()
        self._take_script = self._redis.register_script(_TAKE)
        self._lease_script = self._redis.register_script(_LEASE)
        self._put_counts_script = self._redis.register_script(_PUT_COUNTS)
        self._sum_counts_script = self._redis.register_script(_SUM_COUNTS)
        self._down_until = 0.0
        self._was_up = True
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._subscriber: asyncio.Task[None] | None = None
        self._closed = False
        self._refresher: asyncio.Task[None] | None = None
        self._started = False
        metrics.store_up.labels(self.kind).set(1)

    # --- health ---------------------------------------------------------------------------

    def available(self) -> bool:
        return self._clock.now() >= self._down_until and self._refresher is None

    def _failed(self, op: str, err: BaseException) -> StoreUnavailable:
        self._m.store_errors.labels(self.kind, op).inc()
        self._clients.forget_master(self._redis)
        self._down_until = self._clock.now() + self._retry_after
        if self._target.mode == "cluster" and self._refresher is None and not self._closed:
            self._refresher = asyncio.ensure_future(self._refresh_slots())
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
            if self._on_change is not None:
                self._on_change(False, f"{op}: {type(err).__name__}")
        return StoreUnavailable(f"state store {op} failed: {type(err).__name__}")

    async def _refresh_slots(self) -> None:
        """Relearn a cluster's slot map off the request path; the store stays down until then.

        redis-py refreshes the map inside the next command after a connection error, and the
        refresh (CLUSTER SLOTS on a live node, then COMMAND) takes longer than a request's
        few-millisecond budget: cancelled there, it would never finish. So it runs here,
        once per pause, with a control-plane timeout, until a live node answers.
        """
        try:
            while not self._closed:
                await asyncio.sleep(self._retry_after)
                try:
                    async with asyncio.timeout(_CLUSTER_MAP_TIMEOUT):
                        await self._redis.initialize()
                except _FAILED as e:
                    log.debug("cluster slot map refresh failed (%r); retrying", e)
                    continue
                return
        finally:
            self._refresher = None

    def _ok(self) -> None:
        if not self._was_up:
            self._was_up = True
            self._m.store_up.labels(self.kind).set(1)
            log.warning("state store %s is back; shared state resumes", self._safe_url())
            if self._on_change is not None:
                self._on_change(True, "")

    def _check(self, op: str) -> None:
        if self._clock.now() < self._down_until or self._refresher is not None:
            self._m.store_skipped.labels(self.kind, op).inc()
            raise StoreUnavailable(f"state store is down; {op} skipped")

    def _safe_url(self) -> str:
        # never log a password that may be part of the URL
        return self._target.safe()

    @property
    def mode(self) -> str:
        """single, sentinel or cluster."""
        return self._target.mode

    def key(self, key: str) -> str:
        """The Redis key for a store key: prefixed, and hash-tagged in a cluster."""
        if self._target.mode == "cluster":
            return self._prefix + cluster_key(key)
        return self._prefix + key

    # --- keys -----------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        self._check("get")
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._redis.get(self.key(key))
        except _FAILED as e:
            raise self._failed("get", e) from None
        self._ok()
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check("set")
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self.key(key), value, px=max(1, int(ttl * 1000)))
        except _FAILED as e:
            raise self._failed("set", e) from None
        self._ok()

    async def hold_lease(self, key: str, owner: bytes, ttl: float) -> bool:
        self._check("hold_lease")
        try:
            async with asyncio.timeout(self._timeout):
                held = await self._lease_script(
                    keys=[self.key(key)], args=[owner, max(1, int(ttl * 1000))]
                )
        except _FAILED as e:
            raise self._failed("hold_lease", e) from None
        self._ok()
        return bool(int(held))

    async def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> TakeResult:
        self._check("take")
        try:
            async with asyncio.timeout(self._timeout):
                allowed, tokens, wait = await self._take_script(
                    keys=[self.key(key)], args=[rate, burst, cost]
                )
        except _FAILED as e:
            raise self._failed("take", e) from None
        self._ok()
        w = float(wait)
        return TakeResult(bool(int(allowed)), float(tokens), float("inf") if w < 0 else w)

    # --- counters -------------------------------------------------------------------------

    async def put_counts(
        self, items: Sequence[tuple[str, int]], member: str, ttl: float
    ) -> list[int]:
        if not items:
            return []
        self._check("put_counts")
        ttl_ms = max(1, int(ttl * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                sums = await self._put_counts_script(
                    keys=[self.key(k) for k, _ in items],
                    args=[member, ttl_ms, *(count for _, count in items)],
                )
        except _FAILED as e:
            raise self._failed("put_counts", e) from None
        self._ok()
        return [int(v) for v in sums]

    async def sum_counts(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        self._check("sum_counts")
        try:
            async with asyncio.timeout(self._timeout):
                sums = await self._sum_counts_script(keys=[self.key(k) for k in keys])
        except _FAILED as e:
            raise self._failed("sum_counts", e) from None
        self._ok()
        return [int(v) for v in sums]

    # --- broadcast ------------------------------------------------------------------------

    async def publish(self, channel: str, message: bytes) -> None:
        self._check("publish")
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.publish(self._prefix + channel, message)
        except _FAILED as e:
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
            client = self._clients.subscriber()
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
        # Connect and load the scripts now (best effort), so the first requests do not pay
        # for finding the master, learning a cluster's slot map, or a NOSCRIPT round trip.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            if self._target.mode == "cluster":
                async with asyncio.timeout(_CLUSTER_MAP_TIMEOUT):
                    await self._redis.initialize()
            async with asyncio.timeout(_CONTROL_TIMEOUT):
                await self._redis.script_load(_TAKE)
                await self._redis.script_load(_LEASE)
                await self._redis.script_load(_PUT_COUNTS)
                await self._redis.script_load(_SUM_COUNTS)
        if self._handlers and self._subscriber is None:
            self._subscriber = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
            self._subscriber = None
        # bounded: closing a dead cluster node's connections must not hold up a shutdown
        with contextlib.suppress(*_FAILED):
            async with asyncio.timeout(_CONTROL_TIMEOUT):
                await self._redis.aclose()
        await self._clients.close_sentinels()


__all__ = ["RedisStore"]
