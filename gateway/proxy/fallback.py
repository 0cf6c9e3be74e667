"""The fallback stage: a fresh cache hit first, then the primary path, then the route's chain.

When the primary path (retries and hedges included) failed, was shed, or found every
breaker open, the steps of `fallback:` are tried in order: a stale cached answer, a backup
backend with its own timeout, an operator's rule. The first that answers wins and says so
(`x-tailguard-fallback: cache|backend|rules`). The time the backup steps need is held back
from the primary path's deadline, so a slow primary cannot eat the fallback's share. When
nothing answers, the error lists every step and why it could not.

Successful buffered answers are written to the cache off the request path: the client
never waits on the store.
"""

from __future__ import annotations

import asyncio
import json
import logging

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.clock import Clock
from gateway.errors import (
    DeadlineExceeded,
    Shed,
    StoreUnavailable,
    TailguardError,
    UpstreamUnavailable,
)
from gateway.fallback import grpc_rules
from gateway.fallback.cache import (
    KEPT_HEADERS,
    CacheConfig,
    CachedAnswer,
    LocalEntries,
    cache_key,
    decode,
    encode,
)
from gateway.fallback.rules import JSON_TYPE, RuleRequest, RuleSet
from gateway.policy.compile import FallbackKind, FallbackStep, RouteRuntime
from gateway.proxy.answers import ERROR_HEADER
from gateway.proxy.attempts import AttemptResult, AttemptRunner
from gateway.proxy.exchange import Exchange, LocalAnswer, ProxyRequest
from gateway.proxy.grpc_wire import WireError, without_field
from gateway.proxy.pipeline import Answer, Handler
from gateway.state.store import StateStore
from gateway.telemetry.catalog import Metrics

log = logging.getLogger("tailguard.fallback")

# Cache writes waiting for the store; beyond this many, new writes are dropped, not queued.
MAX_PENDING_WRITES = 1000

# What makes the primary path "failed" for the chain; client errors and rate limits are not.
PRIMARY_FAILURES = (UpstreamUnavailable, Shed, DeadlineExceeded)


class ResponseCaches:
    """The cache of every route: the shared store when it is shared, else a local LRU each."""

    def __init__(self, store: StateStore, metrics: Metrics, clock: Clock) -> None:
        self._store = store
        self._m = metrics
        self._clock = clock
        self._local: dict[str, LocalEntries] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def _entries(self, route: str, config: CacheConfig) -> LocalEntries:
        entries = self._local.get(route)
        if entries is None:
            entries = self._local[route] = LocalEntries(config.max_entries)
        elif entries.capacity != config.max_entries:
            entries.capacity = config.max_entries  # a reload resized it; the LRU trims on put
        return entries

    async def lookup(self, route: str, config: CacheConfig, key: str) -> CachedAnswer | None:
        """The entry if one is kept; None on a miss or when the store cannot answer (bypass)."""
        if not self._store.shared:
            return self._entries(route, config).get(key, self._clock.now())
        if not self._store.available():
            self._m.child(self._m.cache_lookups, route, "bypass").inc()
            return None
        try:
            raw = await self._store.get(key)
        except StoreUnavailable:
            self._m.child(self._m.cache_lookups, route, "bypass").inc()
            return None
        return decode(raw) if raw is not None else None

    def store(self, route: str, config: CacheConfig, key: str, result: AttemptResult) -> None:
        """Keep a successful buffered answer; never blocks the request that produced it."""
        up = result.response
        if up is None or up.body is None or not 200 <= up.status < 300:
            return
        m = self._m
        if len(up.body) > config.max_entry_size:
            m.child(m.cache_stores, route, "too_large").inc()
            return
        headers = tuple((h, up.headers[h]) for h in KEPT_HEADERS if h in up.headers)
        entry = CachedAnswer(up.status, headers, up.body, self._clock.wall())
        if not self._store.shared:
            self._entries(route, config).put(key, entry, self._clock.now() + config.keep_for)
            m.child(m.cache_stores, route, "stored").inc()
            return
        if not self._store.available() or len(self._pending) >= MAX_PENDING_WRITES:
            m.child(m.cache_stores, route, "skipped").inc()
            return
        task = asyncio.ensure_future(self._write(route, key, entry, config.keep_for))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, route: str, key: str, entry: CachedAnswer, ttl: float) -> None:
        try:
            await self._store.set(key, encode(entry), ttl)
        except StoreUnavailable:
            self._m.child(self._m.cache_stores, route, "error").inc()
        else:
            self._m.child(self._m.cache_stores, route, "stored").inc()

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def cached_answer(entry: CachedAnswer, age: float) -> LocalAnswer:
    headers = dict(entry.headers)
    headers["age"] = str(int(age))
    return LocalAnswer(entry.status, entry.body, headers)


class FallbackStage:
    """Between admission checks and attempts: cache hits, the primary path, then the chain."""

    def __init__(
        self, runner: AttemptRunner, caches: ResponseCaches, metrics: Metrics, clock: Clock
    ) -> None:
        self._runner = runner
        self._caches = caches
        self._m = metrics
        self._clock = clock

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route = ex.route
        assert route is not None
        config = route.cache
        plan = route.fallback
        if config is None and plan is None:
            return await nxt(ex)
        req = ex.request
        key = None
        call = req.grpc
        if config is not None and not (call is not None and call.stream):
            scope = (
                ex.identity.tenant if ex.identity is not None else "",
                ex.split_backend or "",
            )
            key = cache_key(
                route.name,
                config,
                req.method,
                req.path_qs,
                req.headers,
                _cache_body(req),
                scope=scope,
            )
            if key is not None and config.ttl > 0:
                trace = ex.trace
                span = (
                    trace.child("cache lookup", **{"tailguard.route": route.name})
                    if trace
                    else None
                )
                entry = await self._caches.lookup(route.name, config, key)
                age = entry.age(self._clock.wall()) if entry is not None else 0.0
                if trace is not None:
                    hit = entry is not None and age < config.ttl
                    trace.note("cache_lookup", result="hit" if hit else "miss", age=age)
                    trace.close_child(span, **{"tailguard.cache.result": "hit" if hit else "miss"})
                if entry is not None and age < config.ttl:
                    self._m.child(self._m.cache_lookups, route.name, "hit").inc()
                    ex.backend = None
                    ex.add_headers({"x-tailguard-cache": "hit"})
                    return cached_answer(entry, age)
        reserve = plan.reserve if plan is not None else 0.0
        ex.deadline -= reserve
        failure: TailguardError
        try:
            answer = await nxt(ex)
        except PRIMARY_FAILURES as e:
            if plan is None:
                raise
            failure = e
        else:
            if isinstance(answer, LocalAnswer) or answer.acceptable:
                if key is not None and config is not None and isinstance(answer, AttemptResult):
                    self._caches.store(route.name, config, key, answer)
                return answer
            if plan is None:
                return answer
            failure = UpstreamUnavailable(answer.message or "the backend answered with a failure")
            _drop(answer)
        finally:
            ex.deadline += reserve
        return await self._chain(ex, route, key, failure)

    async def _chain(
        self, ex: Exchange, route: RouteRuntime, key: str | None, failure: TailguardError
    ) -> Answer:
        plan = route.fallback
        assert plan is not None
        notes = [f"primary: {failure.message}"]
        trace = ex.trace
        if trace is not None:
            trace.note("primary_failed", reason=failure.message, code=failure.code)
        for step in plan.steps:
            kind = step.kind.value
            span = (
                trace.child(f"fallback {kind}", **{"tailguard.fallback.kind": kind})
                if trace is not None
                else None
            )
            try:
                answer = await self._step(ex, route, key, step)
            except TailguardError as e:
                answer, why = None, e.message
            else:
                why = "no answer"
            if trace is not None:
                served = answer is not None
                trace.note(
                    "fallback_step",
                    kind=kind,
                    backend=step.backend,
                    served=served,
                    why=None if served else why,
                )
                trace.close_child(
                    span,
                    **{
                        "tailguard.fallback.served": served,
                        "tailguard.fallback.backend": step.backend,
                        "tailguard.fallback.reason": None if served else why,
                    },
                )
            if answer is not None:
                self._m.child(self._m.fallbacks, route.name, kind).inc()
                return answer
            self._m.child(self._m.fallback_failures, route.name, kind).inc()
            notes.append(f"{kind}: {why}" if step.backend is None else f"{step.backend}: {why}")
        # nothing answered: no backend or endpoint header may suggest otherwise
        ex.backend = ex.endpoint = None
        raise type(failure)("; ".join(notes), headers=failure.headers)

    async def _step(
        self, ex: Exchange, route: RouteRuntime, key: str | None, step: FallbackStep
    ) -> Answer | None:
        if step.kind is FallbackKind.CACHE:
            config = route.cache
            if key is None or config is None:
                raise UpstreamUnavailable("request is not cacheable")
            entry = await self._caches.lookup(route.name, config, key)
            if entry is None:
                raise UpstreamUnavailable("no cached answer")
            age = entry.age(self._clock.wall())
            if age >= config.keep_for:
                raise UpstreamUnavailable(f"cached answer too old ({age:.0f}s)")
            self._m.child(self._m.cache_lookups, route.name, "stale").inc()
            ex.fallback = "cache"
            ex.backend = ex.endpoint = None
            return cached_answer(entry, age)
        if step.kind is FallbackKind.RULES:
            assert step.rules is not None
            req = ex.request
            if req.grpc is not None:
                return self._grpc_rule(ex, step.rules)
            rule = step.rules.answer(
                RuleRequest(req.method, req.path, req.headers, req.body, self._clock.wall())
            )
            if rule is None:
                raise UpstreamUnavailable("no rule matched")
            ex.fallback = "rules"
            ex.backend = ex.endpoint = None
            ex.add_headers({"x-tailguard-fallback-rule": rule.rule})
            return LocalAnswer(rule.status, rule.body, dict(rule.headers))
        return await self._backup(ex, route, step)

    def _grpc_rule(self, ex: Exchange, rules: RuleSet) -> LocalAnswer:
        """A rule's answer to a gRPC call: an error answer as the matching gRPC status; for
        `ModelInfer` (which the rules read as KServe v2 JSON) a JSON infer answer goes back
        as a `ModelInferResponse`."""
        req = ex.request
        call = req.grpc
        assert call is not None
        if call.stream:
            raise UpstreamUnavailable("rules do not answer streams")
        infer = req.path_qs.endswith("/ModelInfer")
        try:
            view = grpc_rules.request_json(req.body) if infer else b""
        except ValueError as e:
            raise UpstreamUnavailable(str(e)) from None
        headers = CIMultiDictProxy(CIMultiDict({**req.headers, "content-type": JSON_TYPE}))
        rule = rules.answer(RuleRequest(req.method, req.path, headers, view, self._clock.wall()))
        if rule is None:
            raise UpstreamUnavailable("no rule matched")
        kept = {k: v for k, v in rule.headers if k.lower() != "content-type"}
        if rule.status >= 300:
            body = grpc_rules.error_message(rule.body).encode()
            kept[ERROR_HEADER] = "fallback_rule"
        elif infer:
            try:
                body = grpc_rules.infer_response(rule.body, json.loads(view)["id"])
            except grpc_rules.NotAnInferAnswer as e:
                raise UpstreamUnavailable(f"rule '{rule.rule}': {e}") from None
        else:
            method = req.path_qs.rpartition("/")[2]
            raise UpstreamUnavailable(
                f"rule '{rule.rule}' answered {rule.status}, which gRPC {method} cannot carry"
            )
        ex.fallback = "rules"
        ex.backend = ex.endpoint = None
        ex.add_headers({"x-tailguard-fallback-rule": rule.rule})
        return LocalAnswer(rule.status, body, kept)

    async def _backup(self, ex: Exchange, route: RouteRuntime, step: FallbackStep) -> Answer:
        assert step.backend is not None
        backend = ex.snapshot.backends.get(step.backend)
        if backend is None:
            raise UpstreamUnavailable("backend is not defined")
        now = self._clock.now()
        route_deadline = ex.deadline
        ex.deadline = min(route_deadline, now + step.timeout)
        if ex.deadline <= now:
            ex.deadline = route_deadline
            raise DeadlineExceeded("no time left")
        ex.backend = backend
        ex.endpoint = None
        try:
            async with asyncio.timeout(ex.deadline - now + 0.05):
                result = await self._runner.run(ex, route, backend)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {step.timeout:g}s") from None
        finally:
            ex.deadline = route_deadline
        if not result.acceptable:
            _drop(result)
            raise UpstreamUnavailable(result.message or "answered with a failure")
        ex.fallback = "backend"
        return result


def _cache_body(req: ProxyRequest) -> bytes:
    """The body a cache key is made of: a gRPC request's own id (field 3) left out."""
    if req.grpc is None:
        return req.body
    try:
        return without_field(req.body, 3)
    except WireError:
        return req.body


def _drop(result: AttemptResult) -> None:
    """Close a failed answer nobody will read (its outcome is already reported)."""
    if result.response is not None and result.response.stream is not None:
        result.response.close()


__all__ = ["FallbackStage", "ResponseCaches", "cached_answer"]
