"""Admission control: concurrency limits with a bounded priority queue, adaptive limits,
and token buckets (Envoy overload manager, Netflix concurrency-limits, SRE book).

`ConcurrencyLimiter` is bookkeeping only. The async caller keeps one future per queued
ticket and does what the limiter says:

* `offer(priority, now)` → ADMIT: run the request now, and call `release` when it ends.
  QUEUE: park on `offer.ticket`, for at most `queue_timeout`; if the park ends without
  being woken, call `cancel(ticket)` and shed. SHED: answer 503 with retry-after.
  In every case, if `offer.evicted` is set, that queued ticket lost its place to a more
  important newcomer: wake its waiter with "shed".
* `release(now)` → a ticket (or None): the finished request's slot passes straight to
  that ticket (it now counts as in flight), so wake its waiter as admitted; if that
  waiter has already gone, call `release` again for it.

The queue is bounded (`queue`, possibly 0) and served highest priority first, FIFO
within a priority; when full, a newcomer that outranks the lowest queued priority
evicts the newest ticket of that priority, so the least important work is shed first.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """max_concurrency: requests in flight at once; queue: how many may wait beyond that
    (0: none); queue_timeout: seconds a queued request waits before it is shed."""

    max_concurrency: int
    queue: int = 0
    queue_timeout: float = 0.05

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(
                f"admission max_concurrency must be at least 1, got {self.max_concurrency!r}"
            )
        if self.queue < 0:
            raise ValueError(f"admission queue must be 0 or more, got {self.queue!r}")
        if not (self.queue_timeout >= 0 and math.isfinite(self.queue_timeout)):
            raise ValueError(
                "admission queue_timeout must be a finite number of seconds >= 0, "
                f"got {self.queue_timeout!r}"
            )


class Verdict(enum.Enum):
    ADMIT = "admit"
    QUEUE = "queue"
    SHED = "shed"


class Offer(NamedTuple):
    """The answer to `offer`: `ticket` is set for QUEUE; `evicted` is a queued ticket to shed."""

    verdict: Verdict
    ticket: int | None
    evicted: int | None


_ADMIT = Offer(Verdict.ADMIT, None, None)
_SHED = Offer(Verdict.SHED, None, None)


class AdaptiveLimit(Protocol):
    """A concurrency limit that learns from round-trip times (e.g. `GradientLimit`)."""

    @property
    def limit(self) -> int: ...

    def update(self, rtt: float, in_flight: int, now: float) -> int: ...


class ConcurrencyLimiter:
    """In-flight count, bounded priority queue and (optionally adaptive) limit of one scope."""

    __slots__ = ("_in_flight", "_next", "_queues", "_source", "_tickets", "config")

    def __init__(self, config: AdmissionConfig, limit_source: AdaptiveLimit | None = None) -> None:
        self.config = config
        self._source = limit_source
        self._in_flight = 0
        self._next = 0
        self._queues: dict[int, OrderedDict[int, None]] = {}  # priority → tickets, FIFO
        self._tickets: dict[int, int] = {}  # queued ticket → priority

    @property
    def limit(self) -> int:
        """Current limit: the adaptive one when there is a source, else `max_concurrency`."""
        source = self._source
        return source.limit if source is not None else self.config.max_concurrency

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._tickets)

    def offer(self, priority: int, now: float) -> Offer:
        """Admit, queue or shed one new request of `priority` (higher = more important)."""
        if self._in_flight < self.limit:
            self._in_flight += 1
            return _ADMIT
        capacity = self.config.queue
        if capacity == 0:
            return _SHED
        evicted = None
        if len(self._tickets) >= capacity:
            lowest = min(self._queues)
            if priority <= lowest:
                return _SHED
            evicted, _ = self._queues[lowest].popitem(last=True)
            self._forget(evicted, lowest)
        self._next += 1
        ticket = self._next
        queue = self._queues.get(priority)
        if queue is None:
            queue = self._queues[priority] = OrderedDict()
        queue[ticket] = None
        self._tickets[ticket] = priority
        return Offer(Verdict.QUEUE, ticket, evicted)

    def release(self, now: float, rtt: float | None = None) -> int | None:
        """One admitted request finished; returns the queued ticket that takes its slot.

        Pass `rtt` (seconds from admission to finish) to feed an adaptive limit; without
        it the limit does not learn.
        """
        in_flight = self._in_flight
        if rtt is not None and self._source is not None:
            self._source.update(rtt, in_flight, now)
        if in_flight > 0:
            in_flight -= 1
        self._in_flight = in_flight
        if not self._tickets or in_flight >= self.limit:
            return None
        top = max(self._queues)
        ticket, _ = self._queues[top].popitem(last=False)
        self._forget(ticket, top)
        self._in_flight = in_flight + 1
        return ticket

    def cancel(self, ticket: int) -> bool:
        """A queued ticket gave up (timed out, client gone); True if it was still queued."""
        priority = self._tickets.get(ticket)
        if priority is None:
            return False
        del self._queues[priority][ticket]
        self._forget(ticket, priority)
        return True

    def _forget(self, ticket: int, priority: int) -> None:
        del self._tickets[ticket]
        if not self._queues[priority]:
            del self._queues[priority]


class GradientLimit:
    """Adaptive concurrency limit in the style of Netflix's gradient2.

    It compares a long-term RTT (an exponential average over ~`long_window` samples) with
    the latest RTT. While they agree the limit creeps up by about `queue_size * smoothing`
    per sample (less while the limit is below `4 * queue_size`); when recent RTTs rise
    above `tolerance *` the long-term one (queueing), the limit is cut in proportion, by at
    most half per sample before smoothing. It does not grow while less than half of it is
    in use (nothing to learn from an idle scope).

    The caller feeds it through `ConcurrencyLimiter.release(now, rtt=...)`.
    """

    __slots__ = (
        "_estimated",
        "_long",
        "_samples",
        "long_window",
        "max_limit",
        "min_limit",
        "queue_size",
        "smoothing",
        "tolerance",
        "warmup",
    )

    def __init__(
        self,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        smoothing: float = 0.2,
        tolerance: float = 1.5,
        *,
        long_window: int = 600,
        queue_size: float = 4.0,
        warmup: int = 10,
    ) -> None:
        if min_limit < 1:
            raise ValueError(f"min_limit must be at least 1, got {min_limit!r}")
        if max_limit < min_limit:
            raise ValueError(
                f"max_limit ({max_limit!r}) must be at least min_limit ({min_limit!r})"
            )
        if not min_limit <= initial <= max_limit:
            raise ValueError(
                f"initial limit {initial!r} must lie within [{min_limit!r}, {max_limit!r}]"
            )
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be a fraction in (0, 1], got {smoothing!r}")
        if not tolerance >= 1.0:
            raise ValueError(f"tolerance must be at least 1.0, got {tolerance!r}")
        if long_window < 1:
            raise ValueError(f"long_window must be at least 1 sample, got {long_window!r}")
        if not queue_size >= 0:
            raise ValueError(f"queue_size must be 0 or more, got {queue_size!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 sample, got {warmup!r}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.smoothing = smoothing
        self.tolerance = tolerance
        self.long_window = long_window
        self.queue_size = queue_size
        self.warmup = warmup
        self._estimated = float(initial)
        self._long = 0.0
        self._samples = 0

    @property
    def limit(self) -> int:
        return int(self._estimated)

    @property
    def long_rtt(self) -> float:
        """The long-term RTT estimate (seconds), 0.0 before the first sample."""
        return self._long

    def update(self, rtt: float, in_flight: int, now: float) -> int:
        """Learn from one request's round trip (`rtt` seconds, `in_flight` when it ended)."""
        if not rtt > 0:
            return int(self._estimated)
        n = self._samples + 1
        self._samples = n
        if n <= self.warmup:
            long = self._long + (rtt - self._long) / n
        else:
            long = self._long + (rtt - self._long) * (2.0 / (self.long_window + 1))
        if long / rtt > 2.0:
            # latency has recovered after long overload: forget the bad past faster
            long *= 0.95
        self._long = long
        estimated = self._estimated
        if in_flight < estimated / 2:
            return int(estimated)
        gradient = max(0.5, min(1.0, self.tolerance * long / rtt))
        # headroom to probe for more capacity; at most a quarter of the limit, so that even a
        # small limit can shrink under overload (a constant 4 pins any limit <= 8 forever)
        headroom = estimated / 4 if estimated < 4 * self.queue_size else self.queue_size
        target = estimated * gradient + headroom
        estimated = estimated * (1.0 - self.smoothing) + target * self.smoothing
        self._estimated = estimated = max(
            float(self.min_limit), min(float(self.max_limit), estimated)
        )
        return int(estimated)


class TokenBucket:
    """A rate limit: `rate` tokens per second, at most `burst` banked; starts full.

    `try_take` answers 0.0 when the tokens were taken, else the seconds until enough
    will be there (use it for Retry-After; nothing was taken). A request for more than
    `burst` tokens can never succeed and gets `math.inf`: reject it outright.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(
                f"token bucket rate must be a positive number per second, got {rate!r}"
            )
        if not (burst > 0 and math.isfinite(burst)):
            raise ValueError(f"token bucket burst must be a positive number, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None

    def tokens(self, now: float) -> float:
        """Tokens available at `now`."""
        self._refill(now)
        return self._tokens

    def try_take(self, now: float, n: float = 1.0) -> float:
        """Take `n` tokens if there are enough: 0.0 on success, else seconds to wait."""
        self._refill(now)
        tokens = self._tokens
        if tokens + 1e-9 >= n:  # tolerate float dust from refills
            self._tokens = tokens - n if tokens > n else 0.0
            return 0.0
        if n > self.burst:
            return math.inf
        return (n - tokens) / self.rate

    def _refill(self, now: float) -> None:
        last = self._last
        if last is None:
            self._last = now
            return
        if now > last:
            tokens = self._tokens + (now - last) * self.rate
            self._tokens = tokens if tokens < self.burst else self.burst
            self._last = now
