"""Hedging decisions: when to send an extra copy of a slow request (Tail at Scale, gRPC A6).

A hedge is a second (third…) attempt sent while the first is still running, because
the first has already taken longer than most requests do. The first acceptable answer
wins and the others are cancelled. Dean & Barroso hedged BigTable reads after 10 ms and
cut p99.9 from 1,800 ms to 74 ms for 2 % more requests; the trick is that the delay is
a high percentile, so only the slowest few percent of requests are ever hedged.

The delay is either fixed (`HedgeConfig.delay`) or adaptive: the backend group's recent
latency at `percentile` (e.g. p95), clamped to [min_delay, max_delay]. Without a recent
value (cold start) the adaptive policy does not hedge at all rather than guess.

Hedges draw from a token budget (budget.py, ratio `budget_ratio`) so that even when the
backend is slow across the board — when every request passes the delay — hedging adds
at most that share of load instead of doubling it.

The caller's contract: at the start of a request call `delay(recent)`; None = send no
hedge. When `delay` seconds pass without an acceptable answer, call `should_hedge` (or
`decide` for the reason); on True send one extra attempt to an endpoint not yet tried,
preferably in another region (`LocalityBalancer.pick(..., avoid_region=...)`), and arm
the timer again for the next one. The budget token is already spent when it says True.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from gateway.resilience.budget import TokenBudget

# Shortest time left for which a hedge is still worth sending, seconds (see `decide`).
MIN_HEDGE_TIME = 0.001


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """Hedging settings of one route; exactly one of `delay` and `percentile` is set.

    delay: fixed seconds to wait for the first answer before hedging.
    percentile: adaptive delay, the backend's recent latency quantile in (0, 1), e.g. 0.95.
    min_delay, max_delay: clamp of the adaptive delay, seconds (unused with a fixed delay).
    max_extra: most hedges per request, beyond the first attempt (A6: maxAttempts - 1).
    budget_ratio: hedge tokens earned per request; 0.1 = hedges add ≤ 10 % load.
    """

    delay: float | None = None
    percentile: float | None = None
    min_delay: float = 0.005
    max_delay: float = 1.0
    max_extra: int = 1
    budget_ratio: float = 0.1

    def __post_init__(self) -> None:
        if (self.delay is None) == (self.percentile is None):
            raise ValueError(
                "hedging needs exactly one of delay (fixed seconds) or percentile (adaptive), "
                f"got delay={self.delay!r}, percentile={self.percentile!r}"
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

    __slots__ = ("_fixed", "_max", "_max_extra", "_min", "config")

    def __init__(self, config: HedgeConfig) -> None:
        self.config = config
        self._fixed = config.delay
        self._min = config.min_delay
        self._max = config.max_delay
        self._max_extra = config.max_extra

    @property
    def adaptive(self) -> bool:
        return self._fixed is None

    @property
    def max_extra(self) -> int:
        return self._max_extra

    def new_budget(self, reserve: float = 1.0, cap: float = 10.0) -> TokenBudget:
        """A fresh hedge budget earning `budget_ratio` per request (one per route)."""
        return TokenBudget(self.config.budget_ratio, reserve=reserve, cap=cap)

    def delay(self, recent_percentile: float | None) -> float | None:
        """Seconds to wait before hedging, or None: do not hedge this request.

        recent_percentile: the backend group's recent latency at `config.percentile`
            (seconds), ignored with a fixed delay. None, NaN or negative (no recent data)
            → None for an adaptive policy.
        """
        if self._fixed is not None:
            return self._fixed
        if recent_percentile is None or not recent_percentile >= 0:
            return None
        if recent_percentile < self._min:
            return self._min
        if recent_percentile > self._max:
            return self._max
        return recent_percentile

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
