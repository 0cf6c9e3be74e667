"""The quality feature's only piece on the request path: a random draw and an append.

At a request's end the gateway hands every answered exchange to `QualityTap.observe`.
For a route without `quality:` or `shadow:` that is one attribute read; otherwise one
random draw decides whether the exchange is kept (its share is the larger of the sample
and the shadow share), and a kept exchange is appended to a bounded queue that the
quality worker empties off the request path. When the queue is full the exchange is
dropped and counted: the request never waits for the worker and never fails because
of it. Everything else (parsing bodies, sketches, shadow sends) happens in the worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.telemetry.catalog import Metrics

if TYPE_CHECKING:
    from gateway.policy.compile import RouteRuntime
    from gateway.proxy.exchange import ProxyRequest


class Observed:
    """One kept exchange, as the worker will read it; `draw` says what it was kept for."""

    __slots__ = ("backend", "draw", "latency", "request", "response", "route")

    def __init__(
        self,
        route: RouteRuntime,
        backend: str,
        request: ProxyRequest,
        response: bytes | None,
        latency: float,
        draw: float,
    ) -> None:
        self.route = route
        self.backend = backend
        self.request = request
        self.response = response
        self.latency = latency
        self.draw = draw

    @property
    def sampled(self) -> bool:
        """Profiled (the draw fell within the route's sample)."""
        q = self.route.quality
        return q is not None and self.draw < q.sample

    @property
    def shadowed(self) -> bool:
        """Mirrored to the route's shadow backend (the draw fell within its share)."""
        s = self.route.shadow
        return s is not None and self.draw < s.share


class QualityTap:
    """Keeps a random share of answered exchanges in a bounded queue for the worker.

    `random` is the injected random source (`rng.random`); `capacity` bounds the queue.
    The caller (the worker) takes the queue with `take()`.
    """

    __slots__ = ("_capacity", "_m", "_queue", "_random", "dropped", "kept")

    def __init__(self, capacity: int, random: Callable[[], float], metrics: Metrics) -> None:
        if capacity < 1:
            raise ValueError(f"the quality queue holds at least 1 exchange, got {capacity!r}")
        self._capacity = capacity
        self._random = random
        self._m = metrics
        self._queue: deque[Observed] = deque()
        self.kept = 0
        self.dropped = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def resize(self, capacity: int) -> None:
        """A new bound (a reload changed `gateway.quality_queue`); queued exchanges stay."""
        if capacity >= 1:
            self._capacity = capacity

    def __len__(self) -> int:
        return len(self._queue)

    def observe(
        self,
        route: RouteRuntime,
        backend: str,
        request: ProxyRequest,
        response: bytes | None,
        status: int,
        latency: float,
    ) -> None:
        """One answered exchange at its end: keep it (sampled or shadowed) or not. Never raises.

        `backend` is the backend that answered; `response` the buffered answer body (None
        for a stream); `status` the status the client got (only 2xx answers are kept: an
        error says nothing about the data or the model's outputs); `latency` seconds.
        """
        share = route.tap_share
        if share == 0.0 or not 200 <= status < 300:
            return
        draw = self._random()
        if draw >= share:
            return
        queue = self._queue
        if len(queue) >= self._capacity:
            self.dropped += 1
            self._m.child(self._m.quality_dropped, route.name, "queue_full").inc()
            return
        queue.append(Observed(route, backend, request, response, latency, draw))
        self.kept += 1

    def take(self, limit: int) -> list[Observed]:
        """Up to `limit` queued exchanges, oldest first (the worker's side)."""
        queue = self._queue
        n = min(limit, len(queue))
        return [queue.popleft() for _ in range(n)]
