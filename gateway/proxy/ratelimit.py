"""Per-tenant rate limits: one token bucket per key, shared by replicas through the store.

The key is the client's IP, its API key (hashed: a secret never becomes a store key), a
header's value, or the authenticated tenant. With a shared store the bucket lives there
(one atomic round trip); when the store is down or slow, the route's `on_store_error`
says what to do: `local` enforces the same limit on this replica's own bucket, `allow`
lets the request through, `deny` refuses it. Either way the decision is counted, so an
operator can see that limits were not shared for a while.
"""

from __future__ import annotations

import hashlib

from gateway.auth import AuthMethod
from gateway.clock import Clock
from gateway.errors import RateLimited, StoreUnavailable
from gateway.policy.compile import RateLimitSpec
from gateway.proxy.exchange import Exchange
from gateway.proxy.pipeline import Answer, Handler
from gateway.state.memory import MemoryStore
from gateway.state.store import StateStore, TakeResult
from gateway.telemetry.catalog import Metrics

# The identity of a request that lacks the configured key (no header, no API key).
ANONYMOUS = "-"


def limit_key(ex: Exchange, spec: RateLimitSpec) -> str:
    """The bucket this request draws from; never a raw secret, never a client's raw bytes.

    Header values and credentials are hashed: a store key then has a fixed length and no
    secret, whatever header the operator chose. An authenticated caller is limited by its
    identity (the key's id or the token's subject), so minting new tokens or sending the
    key in the other accepted header does not open a fresh bucket.
    """
    req = ex.request
    if spec.key == "client_ip":
        return req.client_ip or ANONYMOUS
    if spec.key == "tenant":
        return ex.identity.tenant if ex.identity is not None else ANONYMOUS
    if spec.key == "header":
        assert spec.header is not None
        value = req.headers.get(spec.header)
        return _digest("header", value) if value else ANONYMOUS
    identity = ex.identity
    if identity is not None and identity.method is not AuthMethod.ANONYMOUS:
        return _digest(identity.method.value, identity.subject)
    secret = None
    for name in _api_key_headers(ex):
        secret = req.headers.get(name)
        if secret is not None:
            break
    if secret is None:
        auth = req.headers.get("authorization", "")
        secret = auth[7:] if auth[:7].lower() == "bearer " else None
    secret = secret.strip() if secret is not None else None
    return _digest("key", secret) if secret else ANONYMOUS


def _api_key_headers(ex: Exchange) -> tuple[str, ...]:
    # the header the policy's auth section names, else the conventional one
    named = tuple(h for h in ex.snapshot.strip_headers if h != "authorization")
    return named or ("x-api-key",)


def _digest(kind: str, value: str) -> str:
    # the kind keeps a header value from sharing a bucket with an equal credential
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:32]


class RateLimitStage:
    """Refuse over-limit requests with 429, `retry-after` and rate-limit headers."""

    def __init__(
        self, store: StateStore, local: MemoryStore, metrics: Metrics, clock: Clock
    ) -> None:
        self._store = store
        self._local = local
        self._m = metrics
        self._clock = clock

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route = ex.route
        assert route is not None
        spec = route.rate_limit
        if spec is None:
            return await nxt(ex)
        bucket = f"rl:{route.name}:{limit_key(ex, spec)}"
        result = await self._take(route.name, spec, bucket)
        limit = str(int(spec.burst))
        if result is None:  # store down and the policy says allow
            return await nxt(ex)
        if not result.allowed:
            self._m.child(self._m.rate_limited, route.name).inc()
            wait = result.retry_after
            retry_after = "3600" if wait == float("inf") else str(max(1, int(wait + 0.999)))
            raise RateLimited(
                f"rate limit of route '{route.name}' exceeded; retry in {retry_after}s",
                headers={
                    "retry-after": retry_after,
                    "x-ratelimit-limit": limit,
                    "x-ratelimit-remaining": "0",
                    "x-ratelimit-reset": retry_after,
                },
            )
        ex.add_headers(
            {"x-ratelimit-limit": limit, "x-ratelimit-remaining": str(int(result.remaining))}
        )
        return await nxt(ex)

    async def _take(self, route: str, spec: RateLimitSpec, bucket: str) -> TakeResult | None:
        store = self._store
        if store.shared:
            if store.available():
                try:
                    return await store.take(bucket, spec.rate, spec.burst)
                except StoreUnavailable:
                    pass
            self._m.child(self._m.rate_limit_fallbacks, route, spec.on_store_error).inc()
            if spec.on_store_error == "allow":
                return None
            if spec.on_store_error == "deny":
                return TakeResult(False, 0.0, 1.0)
        return self._local.take_now(bucket, spec.rate, spec.burst)


__all__ = ["RateLimitStage", "limit_key"]
