"""Circuit breaker: every transition and threshold edge, scripted with explicit `now`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import FakeClock
from gateway.resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from gateway.resilience.outcome import Outcome

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
OK, FAIL = Outcome.SUCCESS, Outcome.STATUS_5XX
T0 = 1000.0


@dataclass
class Transitions:
    seen: list[tuple[BreakerState, BreakerState, float]] = field(default_factory=list)

    def __call__(self, old: BreakerState, new: BreakerState, now: float) -> None:
        self.seen.append((old, new, now))


def feed(b: CircuitBreaker, outcomes: list[Outcome], now: float, latency: float = 0.01) -> None:
    for o in outcomes:
        assert b.allow(now)
        b.record(o, latency, now)


def tripped(cfg: BreakerConfig, now: float = T0) -> tuple[CircuitBreaker, Transitions]:
    t = Transitions()
    b = CircuitBreaker(cfg, on_transition=t)
    feed(b, [FAIL] * cfg.effective_minimum_calls, now)
    assert b.state(now) is OPEN
    return b, t


# --- closed → open -------------------------------------------------------------------------


def test_starts_closed_and_allows() -> None:
    b = CircuitBreaker(BreakerConfig())
    assert b.state(T0) is CLOSED
    assert b.allow(T0)


def test_does_not_trip_below_minimum_calls_even_at_100_percent() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=20))
    feed(b, [FAIL] * 19, T0)
    assert b.state(T0) is CLOSED


def test_trips_exactly_at_minimum_calls() -> None:
    t = Transitions()
    b = CircuitBreaker(BreakerConfig(minimum_calls=20), on_transition=t)
    feed(b, [FAIL] * 19, T0)
    b.record(FAIL, 0.01, T0 + 1)
    assert b.state(T0 + 1) is OPEN
    assert not b.allow(T0 + 1)
    assert t.seen == [(CLOSED, OPEN, T0 + 1)]


def test_trips_exactly_at_the_failure_rate() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=10, failure_rate=0.5))
    feed(b, [OK] * 5 + [FAIL] * 4, T0)
    assert b.state(T0) is CLOSED
    feed(b, [FAIL], T0)  # 5 of 10 = 50 %
    assert b.state(T0) is OPEN


def test_just_below_the_failure_rate_stays_closed() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=10, failure_rate=0.5))
    feed(b, [OK] * 6 + [FAIL] * 4, T0)  # 40 %
    assert b.state(T0) is CLOSED
    feed(b, [OK], T0)  # 4 of 11
    assert b.state(T0) is CLOSED


def test_rate_threshold_is_exact_for_awkward_fractions() -> None:
    # 3/10 must count as >= 0.3 although 0.3 * 10 > 3 in binary floating point
    b = CircuitBreaker(BreakerConfig(minimum_calls=10, failure_rate=0.3))
    feed(b, [OK] * 7 + [FAIL] * 3, T0)
    assert b.state(T0) is OPEN


def test_a_success_that_reaches_minimum_calls_can_trip() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=4, failure_rate=0.5))
    feed(b, [FAIL, FAIL, OK], T0)
    assert b.state(T0) is CLOSED
    feed(b, [OK], T0)  # 2 of 4
    assert b.state(T0) is OPEN


def test_slow_successes_trip_at_the_slow_rate() -> None:
    cfg = BreakerConfig(minimum_calls=10, slow_call_duration=0.8, slow_call_rate=0.8)
    b = CircuitBreaker(cfg)
    for _ in range(2):
        b.record(OK, 0.1, T0)
    for _ in range(7):
        b.record(OK, 0.9, T0)
    b.record(OK, 0.8, T0)  # exactly the duration is not slow
    assert b.state(T0) is CLOSED  # 7 of 10 slow
    b.record(OK, 0.81, T0)  # 8 of 11 = 72.7 %
    assert b.state(T0) is CLOSED
    b.record(OK, 5.0, T0)  # 9 of 12 = 75 %
    b.record(OK, 5.0, T0)  # 10 of 13 = 76.9 %
    b.record(OK, 5.0, T0)  # 11 of 14 = 78.6 %
    assert b.state(T0) is CLOSED
    b.record(OK, 5.0, T0)  # 12 of 15 = 80 %
    assert b.state(T0) is OPEN


def test_slow_failures_count_as_failures_not_slow() -> None:
    cfg = BreakerConfig(
        minimum_calls=4, failure_rate=1.0, slow_call_duration=0.1, slow_call_rate=1.0
    )
    b = CircuitBreaker(cfg)
    feed(b, [FAIL, FAIL], T0, latency=5.0)
    feed(b, [OK, OK], T0, latency=5.0)
    assert b.state(T0) is CLOSED  # 50 % failed, 50 % slow: neither reaches 100 %
    assert b.snapshot(T0).slow == 2


def test_without_slow_duration_nothing_is_slow() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=5, slow_call_rate=0.1))
    feed(b, [OK] * 50, T0, latency=1e6)
    assert b.state(T0) is CLOSED


def test_every_failure_outcome_counts() -> None:
    failures = [o for o in Outcome if o.is_failure]
    assert len(failures) == 6
    b = CircuitBreaker(BreakerConfig(minimum_calls=6, failure_rate=1.0))
    feed(b, failures, T0)
    assert b.state(T0) is OPEN


def test_time_window_forgets_old_failures() -> None:
    b = CircuitBreaker(BreakerConfig(window=10.0, minimum_calls=10, failure_rate=0.5))
    feed(b, [FAIL] * 9, T0)
    # 10 s later the failures left the window: one more failure is 1 of 1, below minimum
    feed(b, [FAIL], T0 + 10.0)
    assert b.state(T0 + 10.0) is CLOSED
    assert b.snapshot(T0 + 10.0).calls == 1


def test_count_window_judges_the_last_n_calls() -> None:
    b = CircuitBreaker(BreakerConfig(window_calls=10, minimum_calls=10, failure_rate=0.5))
    feed(b, [FAIL] * 4 + [OK] * 6, T0)
    assert b.state(T0) is CLOSED
    feed(b, [OK] * 4, T0 + 500)  # the 4 failures slide out, age does not matter
    feed(b, [FAIL] * 4, T0 + 1000)
    assert b.state(T0 + 1000) is CLOSED  # 4 of the last 10
    feed(b, [FAIL], T0 + 1000)
    assert b.state(T0 + 1000) is OPEN


def test_count_window_minimum_calls_capped_at_window_size() -> None:
    cfg = BreakerConfig(window_calls=5, minimum_calls=20)
    assert cfg.effective_minimum_calls == 5
    b = CircuitBreaker(cfg)
    feed(b, [FAIL] * 5, T0)
    assert b.state(T0) is OPEN


# --- client errors and cancellations --------------------------------------------------------


def test_client_error_storm_never_trips() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=1, failure_rate=0.01))
    for i in range(10_000):
        assert b.allow(T0 + i * 0.001)
        b.record(Outcome.CLIENT_ERROR, 0.001, T0 + i * 0.001)
        b.record(Outcome.CANCELLED, 0.001, T0 + i * 0.001)
    assert b.state(T0 + 10) is CLOSED
    assert b.snapshot(T0 + 10).calls == 0


def test_client_errors_do_not_dilute_the_failure_rate() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=4, failure_rate=0.5))
    feed(b, [Outcome.CLIENT_ERROR] * 100 + [FAIL, FAIL, OK], T0)
    assert b.state(T0) is CLOSED
    feed(b, [OK], T0)
    assert b.state(T0) is OPEN


# --- open → half-open ----------------------------------------------------------------------


def test_open_refuses_until_open_for_then_half_open_exactly() -> None:
    b, t = tripped(BreakerConfig(minimum_calls=5, open_for=15.0))
    clock = FakeClock(T0)
    clock.advance(14.999)
    assert not b.allow(clock.now())
    assert b.state(clock.now()) is OPEN
    assert b.snapshot(clock.now()).open_until == T0 + 15.0
    assert b.state(T0 + 15.0) is HALF_OPEN
    assert t.seen == [(CLOSED, OPEN, T0), (OPEN, HALF_OPEN, T0 + 15.0)]


def test_outcomes_reported_while_open_are_ignored() -> None:
    b, _ = tripped(BreakerConfig(minimum_calls=5, open_for=15.0))
    for _ in range(100):
        b.record(OK, 0.01, T0 + 1)
        b.record(FAIL, 0.01, T0 + 1)
    assert b.state(T0 + 1) is OPEN
    assert b.state(T0 + 15) is HALF_OPEN
    assert b.snapshot(T0 + 15).calls == 0


# --- half-open -----------------------------------------------------------------------------


def half_open(cfg: BreakerConfig) -> tuple[CircuitBreaker, Transitions, float]:
    b, t = tripped(cfg)
    now = T0 + cfg.open_for
    assert b.state(now) is HALF_OPEN
    return b, t, now


def test_half_open_permits_are_exhausted() -> None:
    b, _, now = half_open(BreakerConfig(minimum_calls=5, half_open_calls=3))
    assert [b.allow(now) for _ in range(5)] == [True, True, True, False, False]
    assert b.snapshot(now).probes_in_flight == 3


def test_half_open_closes_when_probes_succeed() -> None:
    b, t, now = half_open(BreakerConfig(minimum_calls=5, half_open_calls=3, failure_rate=0.5))
    for _ in range(3):
        assert b.allow(now)
    b.record(OK, 0.01, now + 0.1)
    b.record(FAIL, 0.01, now + 0.2)
    assert b.state(now + 0.2) is HALF_OPEN
    b.record(OK, 0.01, now + 0.3)  # 1 of 3 failed: below 50 %
    assert b.state(now + 0.3) is CLOSED
    assert t.seen[-1] == (HALF_OPEN, CLOSED, now + 0.3)
    # the window starts empty after closing
    assert b.snapshot(now + 0.3).calls == 0
    feed(b, [FAIL] * 4, now + 0.4)
    assert b.state(now + 0.4) is CLOSED


def test_half_open_reopens_at_the_failure_rate_with_a_new_open_for() -> None:
    cfg = BreakerConfig(minimum_calls=5, half_open_calls=4, failure_rate=0.5, open_for=15.0)
    b, t, now = half_open(cfg)
    for _ in range(4):
        assert b.allow(now)
    for o in (OK, FAIL, OK, FAIL):  # exactly 50 %
        b.record(o, 0.01, now + 1)
    assert b.state(now + 1) is OPEN
    assert t.seen[-1] == (HALF_OPEN, OPEN, now + 1)
    assert not b.allow(now + 15.999)
    assert b.state(now + 16) is HALF_OPEN


def test_half_open_reopens_on_slow_probes() -> None:
    cfg = BreakerConfig(
        minimum_calls=5, half_open_calls=2, slow_call_duration=0.5, slow_call_rate=0.5
    )
    b, _, now = half_open(cfg)
    assert b.allow(now) and b.allow(now)
    b.record(OK, 0.1, now)
    b.record(OK, 0.6, now)
    assert b.state(now) is OPEN


def test_half_open_client_errors_release_their_permit() -> None:
    b, _, now = half_open(BreakerConfig(minimum_calls=5, half_open_calls=2))
    assert b.allow(now) and b.allow(now)
    assert not b.allow(now)
    b.record(Outcome.CLIENT_ERROR, 0.01, now)
    assert b.state(now) is HALF_OPEN
    assert b.allow(now)  # the permit came back
    b.record(Outcome.CANCELLED, 0.0, now)
    assert b.allow(now)
    b.record(OK, 0.01, now)
    b.record(OK, 0.01, now)
    assert b.state(now) is CLOSED


def test_half_open_ignores_reports_beyond_its_permits() -> None:
    # an attempt allowed while closed may finish after the breaker went half-open
    b, _, now = half_open(BreakerConfig(minimum_calls=5, half_open_calls=2))
    b.record(FAIL, 0.01, now)
    b.record(FAIL, 0.01, now)
    assert b.state(now) is HALF_OPEN
    assert b.allow(now)
    b.record(OK, 0.01, now)
    assert b.state(now) is HALF_OPEN
    assert b.allow(now)
    b.record(OK, 0.01, now)
    assert b.state(now) is CLOSED


def test_lost_probe_permits_are_reclaimed_after_open_for() -> None:
    b, _, now = half_open(BreakerConfig(minimum_calls=5, half_open_calls=1, open_for=15.0))
    assert b.allow(now)
    # the probe never reports back
    assert not b.allow(now + 14.9)
    assert b.allow(now + 15.0)
    assert not b.allow(now + 15.0)
    b.record(OK, 0.01, now + 15.5)
    assert b.state(now + 15.5) is CLOSED


# --- operators and admin view --------------------------------------------------------------


def test_force_open_holds_until_reset() -> None:
    t = Transitions()
    b = CircuitBreaker(BreakerConfig(open_for=1.0), on_transition=t)
    b.force_open(T0)
    assert b.forced
    assert not b.allow(T0 + 3600)
    assert b.state(T0 + 3600) is OPEN
    assert b.snapshot(T0 + 3600).open_until is None
    b.reset(T0 + 3601)
    assert not b.snapshot(T0 + 3601).forced
    assert b.state(T0 + 3601) is CLOSED
    assert b.allow(T0 + 3601)
    assert t.seen == [(CLOSED, OPEN, T0), (OPEN, CLOSED, T0 + 3601)]


def test_force_open_on_an_open_breaker_stops_its_timer() -> None:
    b, t = tripped(BreakerConfig(minimum_calls=5, open_for=15.0))
    b.force_open(T0 + 1)
    assert b.state(T0 + 100) is OPEN
    assert t.seen == [(CLOSED, OPEN, T0)]


def test_reset_clears_the_window_without_a_transition_when_closed() -> None:
    t = Transitions()
    b = CircuitBreaker(BreakerConfig(minimum_calls=5), on_transition=t)
    feed(b, [FAIL] * 4, T0)
    b.reset()
    feed(b, [FAIL] * 4, T0)
    assert b.state(T0) is CLOSED
    assert t.seen == []


def test_snapshot_and_failure_rate() -> None:
    b = CircuitBreaker(BreakerConfig(minimum_calls=10, slow_call_duration=0.5))
    feed(b, [OK, OK, FAIL], T0)
    b.record(OK, 0.6, T0)
    snap = b.snapshot(T0)
    assert (snap.state, snap.calls, snap.failures, snap.slow) == (CLOSED, 4, 1, 1)
    assert b.failure_rate(T0) == 0.25
    assert snap.to_dict()["state"] == "closed"
    assert snap.changed_at is None
    assert CircuitBreaker(BreakerConfig()).failure_rate(T0) == 0.0


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window"),
        ({"window_calls": 0}, "window_calls"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"failure_rate": 0.0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"slow_call_duration": 0.0}, "slow_call_duration"),
        ({"slow_call_rate": 0.0}, "slow_call_rate"),
        ({"open_for": 0.0}, "open_for"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"window_buckets": 0}, "window_buckets"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


# --- invariants ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 5.0), st.sampled_from(list(Outcome)), st.floats(0.0, 2.0)),
        max_size=300,
    )
)
def test_half_open_never_grants_more_than_its_permits(
    events: list[tuple[float, Outcome, float]],
) -> None:
    cfg = BreakerConfig(
        minimum_calls=3, half_open_calls=2, open_for=4.0, slow_call_duration=1.0, window=5.0
    )
    t = Transitions()
    b = CircuitBreaker(cfg, on_transition=t)
    now = T0
    outstanding = 0
    for gap, outcome, latency in events:
        now += gap
        if b.allow(now):
            outstanding += 1
        snap = b.snapshot(now)
        if snap.state is HALF_OPEN:
            assert snap.probes_in_flight + snap.calls <= cfg.half_open_calls
        if outstanding:
            b.record(outcome, latency, now)
            outstanding -= 1
    for old, new, _ in t.seen:
        assert (old, new) in {
            (CLOSED, OPEN),
            (OPEN, HALF_OPEN),
            (HALF_OPEN, OPEN),
            (HALF_OPEN, CLOSED),
        }
