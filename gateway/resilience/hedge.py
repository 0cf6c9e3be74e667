"""Hedging decisions: when to send an extra copy of a slow request (Tail at Scale, gRPC A6).

A hedge is a second (third…) attempt sent while the first is still running, because
the first has already taken longer than most requests do. The first acceptable answer
wins and the others are cancelled. Dean & Barroso hedged BigTable reads after 10 ms and
cut p99.9 from 1,800 ms to 74 ms for 2 % more requests; the trick is that only the
slowest few percent of requests are ever hedged.

Three kinds of delay (`HedgeConfig`): fixed (`delay`); a percentile of recent first
attempts (`percentile`, e.g. p95); and the recommended adaptive one (`target`).

Why a percentile flips. A GPU server's latency is often a tight fast mode plus a tail
(a cold cache, a GC pause, a batch that waited). With a 5 % tail, p95 sits exactly on
the boundary of the two modes, and sampling noise moves it from one to the other:
inside the fast mode, ordinary requests a hair over it (the gateway's own jitter, a
noisy neighbour) spend the hedge budget and the slow ones find it empty; inside the
slow mode, hedges leave too late to help. Whatever the percentile, a tail whose share
is near it makes the delay flip between modes from one run to the next.

The adaptive delay (`target`): the delay is the (1 - target) quantile of the recent
first attempts of the route on the backend, times (1 + headroom), clamped to
[min_delay, max_delay]. So at most the slowest `target` share of requests is hedged,
and `target` is below the budget (80 % of it by default), so the budget has room to
spare and never chooses which requests get a hedge. It does not flip:

- any tail lighter than `target` lies entirely above the quantile, whatever its exact
  share, so the quantile sits inside the fast mode, near its top: the boundary is at a
  share the operator chose with room, not at an accident of the distribution;
- the headroom (25 %) lifts the delay just above the fast mode, into the gap between
  the modes, so the fast mode's own jitter, and the gateway's, is not hedged: the
  hedges actually sent go to the tail, at about its share, not at `target`;
- the estimate sees the tail it cuts: a first attempt overtaken by its hedge is
  recorded with the time it had run (`HedgeDelayEstimator`). Recording only answers
  would hide the slow requests hedging overtakes, and the delay would sink into the
  fast mode until the budget ran dry and the tail came back: a limit cycle.

A heavier tail than `target` is not cut: its quantile lies in the slow mode. Hedging a
tail heavier than the budget cannot be done within the budget anyway; choose `budget`
(and with it `target`) above the tail to cut. Proven on the real objects in virtual
time (`gateway.loadtest.tailsim`) and in docs/performance.md.

Hedges draw from a token budget (budget.py, ratio `budget_ratio`) so that even when the
backend is slow across the board — when every request passes the delay — hedging adds
at most that share of load instead of doubling it.

The caller's contract: at the start of a request ask the route's `HedgeDelayEstimator`
for the backend (`delay(now)`; a fixed policy needs none: `delay(None)`); None = send no
hedge. Report the first attempt to the estimator (`observe`): its time to an acceptable
answer, or the time it had run when it was overtaken or timed out. When the delay
passes without an acceptable answer, call `should_hedge` (or `decide` for the reason);
on True send one extra attempt to an endpoint not yet tried, preferably in another
region (`LocalityBalancer.pick(..., avoid_region=...)`), and arm the timer again for the
next one. The budget token is already spent when it says True.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from gateway.resilience.budget import TokenBudget
from gateway.resilience.windows import LatencyWindow

# Shortest time left for which a hedge is still worth sending, seconds (see `decide`).
MIN_HEDGE_TIME = 0.001
# Adaptive (target) delays wait this fraction longer than the target quantile (see module doc).
DEFAULT_HEADROOM = 0.25
# The hedge-rate target when a policy names none: this share of the budget.
DEFAULT_TARGET_OF_BUDGET = 0.8


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """Hedging settings of one route; exactly one of `delay` and `percentile` is set.

    delay: fixed seconds to wait for the first answer before hedging.
    percentile: the recent first attempts' latency quantile in (0, 1), e.g. 0.95.
    target: adaptive delay hedging at most this share of requests, in (0, budget_ratio]:
        the (1 - target) quantile of recent first attempts x (1 + headroom).
    headroom: with `target`, how much longer than the quantile to wait (0.25 = 25 %).
    min_delay, max_delay: clamp of an adaptive or percentile delay, seconds.
    max_extra: most hedges per request, beyond the first attempt (A6: maxAttempts - 1).
    budget_ratio: hedge tokens earned per request; 0.1 = hedges add ≤ 10 % load.
    """

    delay: float | None = None
    percentile: float | None = None
    target: float | None = None
    headroom: float = DEFAULT_HEADROOM
    min_delay: float = 0.005
    max_delay: float = 1.0
    max_extra: int = 1
    budget_ratio: float = 0.1

    def __post_init__(self) -> None:
        modes = (self.delay, self.percentile, self.target)
        if sum(m is not None for m in modes) != 1:
            raise ValueError(
                "hedging needs exactly one of delay (fixed seconds), percentile or target "
                f"(adaptive), got delay={self.delay!r}, percentile={self.percentile!r}, "
                f"target={self.target!r}"
            )
        if self.target is not None:
            if not (0 < self.target < 1):
                raise ValueError(
                    f"hedge target must be a fraction in (0, 1) such as 0.08, got {self.target!r}"
                )
            if self.target > self.budget_ratio:
                raise ValueError(
                    f"hedge target ({self.target!r}) must not exceed the budget "
                    f"({self.budget_ratio!r}): the budget, not the delay, would choose which "
                    "requests are hedged"
                )
        if not (math.isfinite(self.headroom) and 0 <= self.headroom <= 10):
            raise ValueError(
                f"hedge headroom must be a fraction in [0, 10] such as 0.25, got {self.headroom!r}"
            )
        if self.delay is not None and not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(
                f"hedge delay must be a finite number of seconds >= 0, got {self.delay!r}"
            )
        if self.percentile is not None and not (0 < self.percentile < 1):
            raise ValueError(
                "hedge percentile must be a fraction in (0, 1) such as 0.95, "
                f"got {self.percentile!r}"
            )
        if not (math.isfinite(self.min_delay) and self.min_delay >= 0):
            raise ValueError(
                f"hedge min_delay must be a finite number of seconds >= 0, got {self.min_delay!r}"
            )
        if not (math.isfinite(self.max_delay) and self.max_delay >= self.min_delay):
            raise ValueError(
                f"hedge max_delay must be finite and >= min_delay ({self.min_delay!r}), "
                f"got {self.max_delay!r}"
            )
        if isinstance(self.max_extra, bool) or not isinstance(self.max_extra, int):
            raise ValueError(f"hedge max_extra must be an integer, got {self.max_extra!r}")
        if self.max_extra < 1:
            raise ValueError(
                f"hedge max_extra must be >= 1 (omit hedging to disable it), got {self.max_extra!r}"
            )
        if not (math.isfinite(self.budget_ratio) and self.budget_ratio >= 0):
            raise ValueError(
                f"hedge budget_ratio must be a finite fraction >= 0, got {self.budget_ratio!r}"
            )


class HedgeReason(enum.Enum):
    """Why a hedge was or was not sent; `.value` is the metric label."""

    HEDGING = "hedging"
    MAX_EXTRA_REACHED = "max_extra_reached"
    NO_TIME_LEFT = "no_time_left"
    BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True, slots=True)
class HedgeDecision:
    hedge: bool
    reason: HedgeReason


_HEDGING = HedgeDecision(True, HedgeReason.HEDGING)
_MAX_EXTRA = HedgeDecision(False, HedgeReason.MAX_EXTRA_REACHED)
_NO_TIME = HedgeDecision(False, HedgeReason.NO_TIME_LEFT)
_NO_BUDGET = HedgeDecision(False, HedgeReason.BUDGET_EXHAUSTED)


class HedgePolicy:
    """The compiled hedging decision of one route; immutable, shared by all its requests."""

    __slots__ = ("_factor", "_fixed", "_max", "_max_extra", "_min", "config", "quantile")

    def __init__(self, config: HedgeConfig) -> None:
        self.config = config
        self._fixed = config.delay
        self._min = config.min_delay
        self._max = config.max_delay
        self._max_extra = config.max_extra
        # the quantile of recent first attempts an adaptive delay is taken from (None: fixed)
        self.quantile: float | None
        if config.target is not None:
            self.quantile = 1.0 - config.target
            self._factor = 1.0 + config.headroom
        else:
            self.quantile = config.percentile
            self._factor = 1.0

    @property
    def adaptive(self) -> bool:
        return self._fixed is None

    @property
    def max_extra(self) -> int:
        return self._max_extra

    def new_budget(self, reserve: float = 1.0, cap: float = 10.0) -> TokenBudget:
        """A fresh hedge budget earning `budget_ratio` per request (one per route)."""
        return TokenBudget(self.config.budget_ratio, reserve=reserve, cap=cap)

    def new_estimator(self) -> HedgeDelayEstimator:
        """The recent-latency state an adaptive delay is computed from (one per route and backend)."""
        return HedgeDelayEstimator(self)

    def delay(self, recent_quantile: float | None) -> float | None:
        """Seconds to wait before hedging, or None: do not hedge this request.

        recent_quantile: recent first-attempt latency at `self.quantile` (seconds), ignored
            with a fixed delay. None, NaN or negative (no recent data) → None for an adaptive
            policy. A target policy waits `headroom` longer than it; both are clamped to
            [min_delay, max_delay].
        """
        if self._fixed is not None:
            return self._fixed
        if recent_quantile is None or not recent_quantile >= 0:
            return None
        value = recent_quantile * self._factor
        if value < self._min:
            return self._min
        if value > self._max:
            return self._max
        return value

    def decide(
        self, extra_sent: int, remaining: float, delay: float, budget: TokenBudget | None
    ) -> HedgeDecision:
        """Whether to send one more hedge now, the delay having passed with no answer.

        extra_sent: hedges already sent by this request (0 for the first hedge).
        remaining: seconds until the request's overall deadline.
        delay: the value `delay()` returned for this request.

        No room: a hedge needs about as long to answer as the delay itself (the delay is
        a latency percentile, or the operator's idea of a normal answer time), so it is
        sent only while remaining > max(delay, MIN_HEDGE_TIME). The budget is asked last,
        so a token is spent only for a hedge that is sent.
        """
        if extra_sent >= self._max_extra:
            return _MAX_EXTRA
        if remaining <= delay or remaining <= MIN_HEDGE_TIME:
            return _NO_TIME
        if budget is not None and not budget.try_spend():
            return _NO_BUDGET
        return _HEDGING

    def should_hedge(
        self, extra_sent: int, remaining: float, delay: float, budget: TokenBudget | None
    ) -> bool:
        """`decide(...).hedge`: True = send one extra attempt now (budget token taken)."""
        return self.decide(extra_sent, remaining, delay, budget).hedge


class HedgeDelayEstimator:
    """How long the first attempts of one route on one backend took lately; gives the delay.

    Fed one sample per hedged request (`observe`): the first attempt's time to an
    acceptable answer, or, when it was abandoned (another attempt won, or it timed out),
    the time it had run by then. An abandoned first attempt was always still running at
    the delay, so its sample lands above the quantile the delay is taken from, where it
    belongs; recording only the answers that won would hide exactly the slow requests
    hedging overtakes, and the delay would sink into the fast mode (see module doc).

    `delay(now)` recomputes the quantile at most every `refresh` seconds (a sort of the
    window's samples) and returns `HedgePolicy.delay` of it: None until `min_samples`
    first attempts were seen (a cold route does not hedge rather than guess).
    """

    __slots__ = ("_cached", "_min_samples", "_next", "_policy", "_refresh", "window")

    def __init__(
        self,
        policy: HedgePolicy,
        window: float = 30.0,
        refresh: float = 0.25,
        min_samples: int = 20,
    ) -> None:
        self._policy = policy
        self.window = LatencyWindow(window=window, buckets=6)
        self._refresh = refresh
        self._min_samples = min_samples
        self._next = -math.inf
        self._cached: float | None = None

    def observe(self, now: float, seconds: float) -> None:
        """One first attempt: answered after `seconds`, or abandoned after running `seconds`."""
        self.window.record(now, seconds)

    def delay(self, now: float) -> float | None:
        """Seconds to wait before the first hedge of a request starting at `now`; None: do not."""
        policy = self._policy
        q = policy.quantile
        if q is None:
            return policy.delay(None)
        if now >= self._next:
            self._next = now + self._refresh
            self._cached = policy.delay(self.window.percentile(q, now, self._min_samples))
        return self._cached
