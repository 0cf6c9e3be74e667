"""Circuit breaker with resilience4j semantics, one per endpoint.

CLOSED: every call is allowed and its outcome recorded in a sliding window (time- or
count-based). Once the window holds at least `minimum_calls` calls and the failure
rate or the slow-call rate reaches its threshold, the breaker OPENs.

OPEN: nothing is allowed for `open_for` seconds; then the breaker becomes HALF_OPEN
(lazily, the next time anyone asks).

HALF_OPEN: `half_open_calls` probe permits are handed out by `allow`. Once that many
probe outcomes are recorded, the breaker CLOSEs if both their failure rate and slow
rate are below the thresholds, else it OPENs again for a fresh `open_for`.

Outcomes that say nothing about the backend (`not outcome.is_countable`: a client's
4xx, a cancelled hedge loser) are never counted; in HALF_OPEN they hand their permit
back. Every transition starts from empty windows.

The caller's contract: ask `allow(now)` before every attempt and skip the endpoint
when it says False; for every allowed attempt call `record(outcome, latency, now)`
exactly once, including for cancelled attempts (with `Outcome.CANCELLED`), or a
half-open probe permit stays taken. A permit that is never returned is reclaimed
after `open_for` seconds without any probe outcome, so a lost report cannot wedge the
breaker half-open forever.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.resilience.outcome import Outcome
from gateway.resilience.windows import CallWindow, CountWindowCounter, TimeWindowCounter

TransitionListener = Callable[["BreakerState", "BreakerState", float], None]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker settings; resilience4j defaults where the gateway has no better one.

    window: seconds of the time-based sliding window (ignored when `window_calls` is set).
    window_calls: when set, a count-based window over that many most recent calls.
    minimum_calls: calls the window must hold before any rate is judged. With a count
        window it is capped at `window_calls`, as resilience4j does.
    failure_rate: fraction in (0, 1]; the breaker opens when failures/calls >= it.
    slow_call_duration: seconds; a success that took longer (strictly) is slow. None: no
        call is ever slow.
    slow_call_rate: fraction in (0, 1]; the breaker opens when slow/calls >= it.
    open_for: seconds the breaker stays open before letting probes through.
    half_open_calls: probes allowed, and outcomes needed, to decide in half-open.
    window_buckets: slices of the time-based window (10 s window → 1 s buckets).
    """

    window: float = 10.0
    window_calls: int | None = None
    minimum_calls: int = 20
    failure_rate: float = 0.5
    slow_call_duration: float | None = None
    slow_call_rate: float = 1.0
    open_for: float = 15.0
    half_open_calls: int = 3
    window_buckets: int = 10

    def __post_init__(self) -> None:
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(
                f"breaker window must be a positive number of seconds, got {self.window!r}"
            )
        if self.window_calls is not None and self.window_calls < 1:
            raise ValueError(f"breaker window_calls must be at least 1, got {self.window_calls!r}")
        if self.minimum_calls < 1:
            raise ValueError(
                f"breaker minimum_calls must be at least 1, got {self.minimum_calls!r}"
            )
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError(
                f"breaker failure_rate must be a fraction in (0, 1], got {self.failure_rate!r}"
            )
        if self.slow_call_duration is not None and not self.slow_call_duration > 0:
            raise ValueError(
                "breaker slow_call_duration must be a positive number of seconds, "
                f"got {self.slow_call_duration!r}"
            )
        if not 0.0 < self.slow_call_rate <= 1.0:
            raise ValueError(
                f"breaker slow_call_rate must be a fraction in (0, 1], got {self.slow_call_rate!r}"
            )
        if not (self.open_for > 0 and math.isfinite(self.open_for)):
            raise ValueError(
                f"breaker open_for must be a positive number of seconds, got {self.open_for!r}"
            )
        if self.half_open_calls < 1:
            raise ValueError(
                f"breaker half_open_calls must be at least 1, got {self.half_open_calls!r}"
            )
        if self.window_buckets < 1:
            raise ValueError(
                f"breaker window_buckets must be at least 1, got {self.window_buckets!r}"
            )

    @property
    def effective_minimum_calls(self) -> int:
        """`minimum_calls`, capped at `window_calls` for a count window (else it never trips)."""
        if self.window_calls is not None:
            return min(self.minimum_calls, self.window_calls)
        return self.minimum_calls


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What the admin view shows for one breaker at one instant."""

    state: BreakerState
    forced: bool
    calls: int  # in the current window (closed) or probes recorded (half-open)
    failures: int
    slow: int
    failure_rate: float
    slow_rate: float
    open_until: float | None  # when an open breaker lets probes through; None if not open/forced
    probes_in_flight: int
    changed_at: float | None  # `now` of the last transition, None if it never changed

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "state": self.state.value,
            "forced": self.forced,
            "calls": self.calls,
            "failures": self.failures,
            "slow": self.slow,
            "failure_rate": self.failure_rate,
            "slow_rate": self.slow_rate,
            "open_until": self.open_until,
            "probes_in_flight": self.probes_in_flight,
            "changed_at": self.changed_at,
        }


class CircuitBreaker:
    """One endpoint's breaker; see the module docstring for the state machine and contract."""

    __slots__ = (
        "_changed_at",
        "_forced",
        "_min_calls",
        "_on_transition",
        "_permits",
        "_probe_calls",
        "_probe_failures",
        "_probe_progress",
        "_probe_slow",
        "_retry_at",
        "_slow_after",
        "_state",
        "_window",
        "config",
    )

    def __init__(
        self, config: BreakerConfig, on_transition: TransitionListener | None = None
    ) -> None:
        self.config = config
        self._on_transition = on_transition
        self._window: CallWindow = (
            CountWindowCounter(config.window_calls)
            if config.window_calls is not None
            else TimeWindowCounter(config.window, config.window_buckets)
        )
        self._min_calls = config.effective_minimum_calls
        self._slow_after = (
            config.slow_call_duration if config.slow_call_duration is not None else math.inf
        )
        self._state = BreakerState.CLOSED
        self._forced = False
        self._retry_at = math.inf
        self._changed_at: float | None = None
        self._permits = 0  # half-open permits handed out and not yet reported
        self._probe_calls = 0
        self._probe_failures = 0
        self._probe_slow = 0
        self._probe_progress = 0.0  # last half-open entry, grant or probe outcome

    # --- questions ---------------------------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        """The state at `now`; an OPEN breaker whose `open_for` has elapsed turns HALF_OPEN here."""
        if self._state is BreakerState.OPEN and now >= self._retry_at:
            self._transition(BreakerState.HALF_OPEN, now)
        return self._state

    @property
    def forced(self) -> bool:
        """True while an operator holds the breaker open (`force_open`) until `reset`."""
        return self._forced

    def allow(self, now: float) -> bool:
        """May an attempt go to this endpoint now? In HALF_OPEN, True takes a probe permit.

        After True the caller must `record` the attempt's outcome (CANCELLED if it never
        ran), which returns the permit.
        """
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._permits + self._probe_calls < self.config.half_open_calls:
            self._permits += 1
            self._probe_progress = now
            return True
        if self._permits and now - self._probe_progress >= self.config.open_for:
            # probes granted long ago never reported back: consider them lost
            self._permits = 1
            self._probe_progress = now
            return True
        return False

    def failure_rate(self, now: float) -> float:
        """Failure fraction of the calls currently judged (window or probes); 0.0 when none."""
        return self.snapshot(now).failure_rate

    def snapshot(self, now: float) -> BreakerSnapshot:
        """State and counts for the admin view (may turn OPEN into HALF_OPEN, like `state`)."""
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            calls, failures, slow = self._probe_calls, self._probe_failures, self._probe_slow
        elif state is BreakerState.CLOSED:
            calls, failures, slow = self._window.totals(now)
        else:
            calls = failures = slow = 0
        return BreakerSnapshot(
            state=state,
            forced=self._forced,
            calls=calls,
            failures=failures,
            slow=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_rate=slow / calls if calls else 0.0,
            open_until=(
                self._retry_at if state is BreakerState.OPEN and not self._forced else None
            ),
            probes_in_flight=self._permits,
            changed_at=self._changed_at,
        )

    # --- reports -----------------------------------------------------------------------------

    def record(self, outcome: Outcome, latency: float, now: float) -> None:
        """Report one allowed attempt's outcome and latency (seconds).

        Outcomes reported while OPEN (attempts allowed before the breaker tripped) are
        ignored; so are half-open reports beyond the permits handed out.
        """
        state = self._state
        if state is BreakerState.CLOSED:
            if not outcome.is_countable:
                return
            failed = outcome.is_failure
            slow = not failed and latency > self._slow_after
            window = self._window
            window.record(now, failed, slow)
            calls, failures, slows = window.totals(now)
            if calls >= self._min_calls and (
                failures / calls >= self.config.failure_rate
                or slows / calls >= self.config.slow_call_rate
            ):
                self._trip(now)
        elif state is BreakerState.HALF_OPEN:
            if self._permits == 0:
                return
            self._permits -= 1
            if not outcome.is_countable:
                return
            self._probe_progress = now
            self._probe_calls += 1
            if outcome.is_failure:
                self._probe_failures += 1
            elif latency > self._slow_after:
                self._probe_slow += 1
            calls = self._probe_calls
            if calls >= self.config.half_open_calls:
                if (
                    self._probe_failures / calls >= self.config.failure_rate
                    or self._probe_slow / calls >= self.config.slow_call_rate
                ):
                    self._trip(now)
                else:
                    self._transition(BreakerState.CLOSED, now)

    # --- operators ---------------------------------------------------------------------------

    def force_open(self, now: float) -> None:
        """Hold the breaker OPEN (no probes, no timer) until `reset` is called."""
        self._forced = True
        self._retry_at = math.inf
        if self._state is not BreakerState.OPEN:
            self._transition(BreakerState.OPEN, now)
        else:
            self._clear()

    def reset(self, now: float | None = None) -> None:
        """Back to CLOSED with empty windows, releasing a forced open.

        `now` is only passed on to the transition listener (the last transition's time is
        used when omitted).
        """
        self._forced = False
        when = now if now is not None else (self._changed_at or 0.0)
        if self._state is BreakerState.CLOSED:
            self._clear()
        else:
            self._transition(BreakerState.CLOSED, when)

    # --- internals ---------------------------------------------------------------------------

    def _trip(self, now: float) -> None:
        self._transition(BreakerState.OPEN, now)

    def _clear(self) -> None:
        self._window.reset()
        self._permits = 0
        self._probe_calls = self._probe_failures = self._probe_slow = 0

    def _transition(self, new: BreakerState, now: float) -> None:
        old = self._state
        self._state = new
        self._changed_at = now
        self._clear()
        if new is BreakerState.OPEN and not self._forced:
            self._retry_at = now + self.config.open_for
        else:
            self._retry_at = math.inf
        if new is BreakerState.HALF_OPEN:
            self._probe_progress = now
        if old is not new and self._on_transition is not None:
            self._on_transition(old, new, now)
