"""The quality feature's only piece on the request path: a random draw and an append.

At an exchange's end (its answer written) the gateway hands it to `QualityTap.observe`;
the caller skips routes without `quality:` or `shadow:` (one attribute read). Otherwise a
few field reads and one random draw decide whether the exchange is kept (its share is the larger of the sample
and the shadow share), and a kept exchange is appended to a bounded queue that the
quality worker empties off the request path. When the queue is full the exchange is
dropped and counted: the request never waits for the worker and never fails because
of it. Everything else (parsing bodies, sketches, shadow sends) happens in the worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.resilience.outcome import Outcome
from gateway.telemetry.catalog import Metrics

if TYPE_CHECKING:
    from gateway.policy.compile import RouteRuntime
    from gateway.proxy.exchange import Exchange, ProxyRequest
    from gateway.proxy.transport import UpstreamResponse


class Observed:
    """One kept exchange, as the worker will read it; `draw` says what it was kept for.

    `answer` is the upstream answer the client got (its body is None for a stream).
    """

    __slots__ = ("answer", "backend", "draw", "latency", "request", "route")

    def __init__(
        self,
        route: RouteRuntime,
        backend: str,
        request: ProxyRequest,
        answer: UpstreamResponse | None,
        latency: float,
        draw: float,
    ) -> None:
        self.route = route
        self.backend = backend
        self.request = request
        self.answer = answer
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

    def observe(self, ex: Exchange, latency: float) -> None:
        """One exchange at its end (answer written): keep it, sampled or shadowed, or not.

        Never raises and never waits. Kept only when a backend answered 2xx and the client
        got that answer whole: not a gateway-made answer (cache, rules, errors), not a
        stream that broke or a client that left. `latency` is seconds from arrival to end.
        The answer is `ex.response` (for a stream its body is not kept: request features only).
        """
        route = ex.route
        backend = ex.backend
        if route is None or backend is None or not 200 <= ex.status < 300 or not ex.attempts:
            return
        share = route.tap_share
        if share == 0.0 or ex.fallback not in (None, "backend"):
            return
        if ex.stream_outcome is not None and ex.stream_outcome is not Outcome.SUCCESS:
            return
        draw = self._random()
        if draw >= share:
            return
        queue = self._queue
        if len(queue) >= self._capacity:
            self.dropped += 1
            self._m.child(self._m.quality_dropped, route.name, "queue_full").inc()
            return
        queue.append(Observed(route, backend.name, ex.request, ex.response, latency, draw))
        self.kept += 1

    def take(self, limit: int) -> list[Observed]:
        """Up to `limit` queued exchanges, oldest first (the worker's side)."""
        queue = self._queue
        n = min(limit, len(queue))
        return [queue.popleft() for _ in range(n)]
