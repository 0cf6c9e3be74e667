"""The async side of admission control: futures for queued requests.

`ConcurrencyLimiter` decides (admit, queue, shed, who is evicted, who goes
next); `AdmissionGate` only parks and wakes requests as told, and bounds every
wait with the queue timeout so nothing queues forever.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

from gateway.clock import Clock
from gateway.errors import Shed
from gateway.policy.compile import RouteRuntime, Snapshot
from gateway.resilience.admission import (
    AdmissionConfig,
    ConcurrencyLimiter,
    GradientLimit,
    Verdict,
)
from gateway.telemetry.catalog import Metrics

RETRY_AFTER_SHED = "1"


class AdmissionGate:
    __slots__ = ("_clock", "_metrics", "_waiters", "config", "limiter", "scope")

    def __init__(
        self, scope: str, config: AdmissionConfig, clock: Clock, metrics: Metrics, adaptive: bool
    ) -> None:
        self.scope = scope
        self.config = config
        self.limiter = ConcurrencyLimiter(
            config,
            GradientLimit(initial=config.max_concurrency, max_limit=config.max_concurrency)
            if adaptive
            else None,
        )
        self._clock = clock
        self._metrics = metrics
        self._waiters: dict[int, asyncio.Future[bool]] = {}

    async def acquire(self, priority: int, route: str) -> None:
        """Return once admitted; raise `Shed` (503 with retry-after) otherwise."""
        offer = self.limiter.offer(priority, self._clock.now())
        if offer.evicted is not None:
            evicted = self._waiters.pop(offer.evicted, None)
            if evicted is not None and not evicted.done():
                evicted.set_result(False)
        if offer.verdict is Verdict.ADMIT:
            return
        if offer.verdict is Verdict.SHED or offer.ticket is None:
            self._shed(route, "limit")
        ticket = offer.ticket
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = fut
        try:
            async with asyncio.timeout(self.config.queue_timeout):
                admitted = await fut
        except (TimeoutError, asyncio.CancelledError) as e:
            self._waiters.pop(ticket, None)
            if fut.done() and not fut.cancelled() and fut.result():
                # admitted at the very moment we gave up: hand the slot on
                self.release()
            else:
                self.limiter.cancel(ticket)
            if isinstance(e, asyncio.CancelledError):
                raise
            self._shed(route, "queue_timeout")
        if not admitted:
            self._shed(route, "evicted")

    def release(self, rtt: float | None = None) -> None:
        """One admitted request finished: wake the next one, if the limiter names one.

        `rtt` (how long the request held its slot) feeds the adaptive limit, when there is one.
        """
        ticket = self.limiter.release(self._clock.now(), rtt)
        while ticket is not None:
            fut = self._waiters.pop(ticket, None)
            if fut is not None and not fut.done():
                fut.set_result(True)
                return
            # the waiter already left; give the slot to the next in line
            ticket = self.limiter.release(self._clock.now())

    def _shed(self, route: str, reason: str) -> NoReturn:
        self._metrics.shed.labels(route, f"{self.scope}:{reason}").inc()
        raise Shed(
            f"overloaded ({self.scope} {reason.replace('_', ' ')}); retry later",
            headers={"Retry-After": RETRY_AFTER_SHED},
        )


class Slot:
    """One admitted request's place in a gate, given back when its exchange ends.

    Releasing reports how long the slot was held, which feeds the adaptive limit.
    """

    __slots__ = ("_clock", "_gate", "_started")

    def __init__(self, gate: AdmissionGate, clock: Clock) -> None:
        self._gate = gate
        self._clock = clock
        self._started = clock.now()

    def release(self) -> None:
        self._gate.release(self._clock.now() - self._started)


class AdmissionGates:
    """Gates by scope, rebuilt only when their settings change (so a reload keeps counts)."""

    def __init__(self, clock: Clock, metrics: Metrics) -> None:
        self._clock = clock
        self._metrics = metrics
        self._global: AdmissionGate | None = None
        self._routes: dict[str, AdmissionGate] = {}

    def for_request(self, snapshot: Snapshot, route: RouteRuntime) -> list[AdmissionGate]:
        gates = []
        limit = snapshot.settings.max_concurrency
        if limit is not None:
            g = self._global
            if g is None or g.config.max_concurrency != limit:
                g = self._global = AdmissionGate(
                    "global",
                    AdmissionConfig(max_concurrency=limit),
                    self._clock,
                    self._metrics,
                    False,
                )
            gates.append(g)
        if route.admission is not None:
            r = self._routes.get(route.name)
            if r is None or r.config != route.admission:
                r = AdmissionGate(
                    "route", route.admission, self._clock, self._metrics, route.adaptive
                )
                self._routes[route.name] = r
            gates.append(r)
        return gates
