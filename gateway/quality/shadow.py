"""Shadow traffic: mirror a request to another backend after the primary answered, compare.

Started by the quality worker, never by the request path: the client already has its
answer. A shadow request is sent once (no retry, no hedge, no fallback), bounded by the
route's own concurrency limit and timeout, and touches no budget, breaker, outlier
detector or latency window: its answer is read, compared with the primary's and thrown
away. When the route already has `max_concurrency` shadow requests in flight, or the
shadow backend has no usable endpoint, the request is skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.errors import AttemptFailed, TailguardError
from gateway.quality.compare import ShadowTally, compare_answers
from gateway.quality.features import Features, decode_body, extract
from gateway.telemetry.catalog import Metrics

if TYPE_CHECKING:
    from gateway.policy.compile import RouteRuntime, Snapshot
    from gateway.proxy.exchange import ProxyRequest
    from gateway.proxy.transports import Transports

log = logging.getLogger("tailguard.quality")

SHADOW_HEADER = "x-tailguard-shadow"
# Not forwarded: hop-by-hop, recomputed, or the gateway's to state.
_SKIP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
        "content-length", "expect",
    }
)  # fmt: skip


def shadow_headers(request: ProxyRequest, strip: frozenset[str]) -> CIMultiDict[str]:
    """The client's headers as a shadow backend gets them, marked as a shadow."""
    named = request.headers.get("Connection")
    extra = {h.strip().lower() for h in named.split(",")} if named else set()
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in request.headers.items():
        lk = k.lower()
        if lk in _SKIP or lk in extra or lk in strip:
            continue
        out.add(k, v)
    out["X-Request-Id"] = request.request_id
    out[SHADOW_HEADER] = "true"
    return out


class ShadowSender:
    """Sends shadow requests and keeps a `ShadowTally` per route."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        transports: Transports,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._current = current
        self._transports = transports
        self._m = metrics
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.tallies: dict[str, tuple[str, ShadowTally]] = {}  # route -> (backend, tally)

    def tally(self, route: str, backend: str) -> ShadowTally:
        entry = self.tallies.get(route)
        if entry is None or entry[0] != backend:
            entry = self.tallies[route] = (backend, ShadowTally())
        return entry[1]

    def in_flight(self, route: str) -> int:
        return self._in_flight.get(route, 0)

    def launch(
        self, route: RouteRuntime, request: ProxyRequest, primary: Features, latency: float
    ) -> None:
        """Start one shadow request for an answered exchange, or count why not."""
        cfg = route.shadow
        assert cfg is not None
        tally = self.tally(route.name, cfg.backend)
        if self._in_flight.get(route.name, 0) >= cfg.max_concurrency:
            self._count(route.name, cfg.backend, tally, "busy")
            return
        self._in_flight[route.name] = self._in_flight.get(route.name, 0) + 1
        task = asyncio.ensure_future(self._run(route, request, primary, latency, tally))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, route: str, backend: str, tally: ShadowTally, result: str) -> None:
        tally.result(result)
        self._m.shadow_requests.labels(route, backend, result).inc()

    async def _run(
        self,
        route: RouteRuntime,
        request: ProxyRequest,
        primary: Features,
        latency: float,
        tally: ShadowTally,
    ) -> None:
        cfg = route.shadow
        assert cfg is not None
        try:
            result, body, took = await self._send(route, request)
            self._count(route.name, cfg.backend, tally, result)
            if body is None:
                return
            snapshot = self._current()
            b = snapshot.backends.get(cfg.backend)
            protocol = b.protocol if b is not None else "http"
            coding = request.headers.get("content-encoding")
            shadow = extract(protocol, decode_body(coding, request.body), body)
            pair = compare_answers(primary, shadow)
            tally.record(pair, latency, took)
            m = self._m
            labels = (route.name, cfg.backend)
            if pair.rows:
                m.shadow_compared.labels(*labels).inc(pair.rows)
                m.shadow_agreed.labels(*labels).inc(pair.agreed)
            for d in pair.score_diffs:
                m.shadow_score_diff.labels(*labels).observe(d)
            if pair.token_diff is not None:
                m.shadow_token_diff.labels(*labels).observe(abs(pair.token_diff))
            m.shadow_latency.labels(*labels, "primary").observe(latency)
            m.shadow_latency.labels(*labels, "shadow").observe(took)
        except Exception:
            log.exception("shadow request of route %s failed unexpectedly", route.name)
        finally:
            self._in_flight[route.name] -= 1

    async def _send(
        self, route: RouteRuntime, request: ProxyRequest
    ) -> tuple[str, bytes | None, float]:
        """(result, the answer body to compare or None, seconds taken)."""
        cfg = route.shadow
        assert cfg is not None
        snapshot = self._current()
        backend = snapshot.backends.get(cfg.backend)
        start = self._clock.now()
        if backend is None:
            return "unusable", None, 0.0
        usable = [i for i, ok in enumerate(backend.availability(start)) if ok]
        if not usable:
            return "unusable", None, 0.0
        turn = self._next.get(route.name, 0)
        self._next[route.name] = turn + 1
        state = backend.states[usable[turn % len(usable)]]
        transport = self._transports.get(state.spec, backend.pool, backend.protocol)
        headers = shadow_headers(request, snapshot.strip_headers)
        try:
            async with asyncio.timeout(cfg.timeout):
                resp = await transport.send(request.method, request.path_qs, headers, request.body)
                try:
                    body = resp.body
                    if resp.stream is not None:
                        body = await _read_bounded(resp.stream, cfg.max_body)
                        if body is None:
                            resp.close()
                            return "too_large", None, self._clock.now() - start
                        resp.release()
                except BaseException:
                    resp.close()
                    raise
        except TimeoutError:
            return "timeout", None, self._clock.now() - start
        except (AttemptFailed, TailguardError, OSError):
            return "failed", None, self._clock.now() - start
        took = self._clock.now() - start
        if not 200 <= resp.status < 300:
            return "error", None, took
        if body is None or len(body) > cfg.max_body:
            return "too_large", None, took
        return "answered", decode_body(resp.headers.get("content-encoding"), body), took

    async def close(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def _read_bounded(stream: object, limit: int) -> bytes | None:
    """The whole streamed body, or None past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    read = stream.read_chunk  # type: ignore[attr-defined]
    while chunk := await read(None):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
