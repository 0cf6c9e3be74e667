"""Outlier detection: Envoy semantics, scripted with explicit `now`."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.resilience.outcome import Outcome
from gateway.resilience.outlier import (
    Ejection,
    EjectionReason,
    OutlierConfig,
    OutlierDetector,
)

OK, FAIL = Outcome.SUCCESS, Outcome.STATUS_5XX
CONSECUTIVE = EjectionReason.CONSECUTIVE_FAILURES
PERCENTAGE = EjectionReason.FAILURE_PERCENTAGE
T0 = 1000.0


def hosts(n: int) -> list[str]:
    return [f"b/h{i}" for i in range(n)]


def fail_streak(d: OutlierDetector, endpoint: str, n: int, now: float) -> Ejection | None:
    result = None
    for _ in range(n):
        result = d.record(endpoint, FAIL, now)
    return result


# --- consecutive failures ------------------------------------------------------------------


def test_ejects_on_the_fifth_consecutive_failure() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(4))
    assert fail_streak(d, "b/h0", 4, T0) is None
    assert not d.is_ejected("b/h0", T0)
    e = d.record("b/h0", FAIL, T0)
    assert e == Ejection("b/h0", CONSECUTIVE, T0 + 30.0, 1)
    assert d.is_ejected("b/h0", T0)
    assert d.ejected(T0) == frozenset({"b/h0"})


def test_a_success_resets_the_streak() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(4))
    fail_streak(d, "b/h0", 4, T0)
    d.record("b/h0", OK, T0)
    assert fail_streak(d, "b/h0", 4, T0) is None
    assert d.record("b/h0", FAIL, T0) is not None


def test_non_countable_outcomes_neither_extend_nor_break_a_streak() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(4))
    fail_streak(d, "b/h0", 4, T0)
    d.record("b/h0", Outcome.CLIENT_ERROR, T0)
    d.record("b/h0", Outcome.CANCELLED, T0)
    assert d.record("b/h0", Outcome.TIMEOUT, T0) is not None


def test_every_backend_failure_counts_toward_the_streak() -> None:
    d = OutlierDetector(OutlierConfig(consecutive_failures=6), hosts(2))
    results = [d.record("b/h0", o, T0) for o in Outcome if o.is_failure]
    assert results[:-1] == [None] * 5
    assert results[-1] is not None


def test_client_error_storm_never_ejects() -> None:
    cfg = OutlierConfig(consecutive_failures=1, failure_percentage=0.01, request_volume=1)
    d = OutlierDetector(cfg, hosts(3))
    for i in range(10_000):
        assert d.record(f"b/h{i % 3}", Outcome.CLIENT_ERROR, T0 + i * 0.001) is None
    assert d.sweep(T0 + 10) == []
    assert d.ejected(T0 + 10) == frozenset()


def test_consecutive_detection_can_be_disabled() -> None:
    d = OutlierDetector(OutlierConfig(consecutive_failures=0), hosts(2))
    assert fail_streak(d, "b/h0", 1000, T0) is None


def test_unknown_endpoint_is_ignored() -> None:
    d = OutlierDetector(OutlierConfig(consecutive_failures=1), hosts(2))
    assert d.record("b/gone", FAIL, T0) is None
    assert not d.is_ejected("b/gone", T0)
    assert not d.uneject("b/gone", T0)


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(4))
    fail_streak(d, "b/h0", 5, T0)
    assert fail_streak(d, "b/h0", 5, T0 + 1) is None  # panic traffic to an ejected host
    assert not d.is_ejected("b/h0", T0 + 30)


# --- ejection time -------------------------------------------------------------------------


def test_ejection_expires_exactly_at_until() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(4))
    fail_streak(d, "b/h0", 5, T0)
    assert d.is_ejected("b/h0", T0 + 29.999)
    assert not d.is_ejected("b/h0", T0 + 30.0)
    assert d.ejected(T0 + 30.0) == frozenset()


def test_ejection_time_grows_with_times_and_is_capped() -> None:
    cfg = OutlierConfig(base_ejection=30.0, max_ejection=100.0)
    d = OutlierDetector(cfg, hosts(2))
    now = T0
    lengths = []
    for _ in range(6):
        e = fail_streak(d, "b/h0", 5, now)
        assert e is not None
        lengths.append((e.until - now, e.times))
        now = e.until  # no sweep in between: nothing decays
    assert lengths == [(30.0, 1), (60.0, 2), (90.0, 3), (100.0, 4), (100.0, 4), (100.0, 4)]


def test_default_cap_is_reached_after_ten_ejections() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(2))
    now = T0
    seen = []
    for _ in range(12):
        e = fail_streak(d, "b/h0", 5, now)
        assert e is not None
        seen.append((e.times, e.until - now))
        now = e.until
    assert seen[:3] == [(1, 30.0), (2, 60.0), (3, 90.0)]
    assert seen[9:] == [(10, 300.0), (10, 300.0), (10, 300.0)]


def test_times_decays_one_per_clean_interval() -> None:
    cfg = OutlierConfig(interval=10.0, base_ejection=30.0)
    d = OutlierDetector(cfg, hosts(2))
    e1 = fail_streak(d, "b/h0", 5, T0)
    assert e1 is not None and e1.times == 1
    e2 = fail_streak(d, "b/h0", 5, e1.until)
    assert e2 is not None and e2.times == 2 and e2.until == T0 + 30 + 60
    now = e2.until
    d.sweep(now)  # ejection just ended: this interval was not clean
    assert d.status(now)[0].times == 2
    d.sweep(now + 10)  # one clean interval
    assert d.status(now + 10)[0].times == 1
    d.sweep(now + 20)
    d.sweep(now + 30)  # never below zero
    assert d.status(now + 30)[0].times == 0
    e3 = fail_streak(d, "b/h0", 5, now + 31)
    assert e3 is not None and e3.times == 1 and e3.until == now + 31 + 30


def test_no_decay_while_ejected_across_sweeps() -> None:
    d = OutlierDetector(OutlierConfig(interval=10.0), hosts(2))
    fail_streak(d, "b/h0", 5, T0)
    for k in range(1, 4):  # sweeps at +10, +20, +30 (the last one as it expires)
        d.sweep(T0 + 10 * k)
    assert d.status(T0 + 30)[0].times == 1


# --- uneject -------------------------------------------------------------------------------


def test_uneject_ends_the_ejection_and_keeps_the_multiplier() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(2))
    fail_streak(d, "b/h0", 5, T0)
    assert d.uneject("b/h0", T0 + 2)
    assert not d.is_ejected("b/h0", T0 + 2)
    assert not d.uneject("b/h0", T0 + 2)
    e = fail_streak(d, "b/h0", 5, T0 + 3)
    assert e is not None and e.times == 2 and e.until == T0 + 3 + 60


# --- max ejection percent ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "percent", "cap"),
    [
        (1, 0.5, 1),
        (2, 0.5, 1),
        (3, 0.5, 1),
        (10, 0.5, 5),
        (10, 0.0, 1),
        (3, 1.0, 3),
        (100, 0.29, 29),
    ],
)
def test_max_ejected(n: int, percent: float, cap: int) -> None:
    cfg = OutlierConfig(max_ejection_percent=percent)
    assert cfg.max_ejected(n) == cap
    d = OutlierDetector(cfg, hosts(n))
    ejected = [fail_streak(d, h, 5, T0) for h in hosts(n)]
    assert sum(e is not None for e in ejected) == cap
    assert len(d.ejected(T0)) == cap


def test_single_host_is_always_ejectable() -> None:
    d = OutlierDetector(OutlierConfig(max_ejection_percent=0.1), ["only"])
    assert fail_streak(d, "only", 5, T0) is not None


def test_capped_streak_needs_a_fresh_streak_after_room_frees_up() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(2))  # cap 1
    assert fail_streak(d, "b/h0", 5, T0) is not None
    assert fail_streak(d, "b/h1", 5, T0) is None  # refused: cap reached
    assert fail_streak(d, "b/h1", 4, T0 + 30) is None  # b/h0 is back, streak restarted
    assert fail_streak(d, "b/h1", 1, T0 + 30) is not None


def test_expired_ejections_free_room_without_a_sweep() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(2))
    fail_streak(d, "b/h0", 5, T0)
    e = fail_streak(d, "b/h1", 5, T0 + 30.0)
    assert e is not None


@settings(max_examples=150)
@given(
    st.integers(1, 12),
    st.sampled_from([0.0, 0.1, 0.34, 0.5, 0.9, 1.0]),
    st.lists(
        st.tuples(st.integers(0, 11), st.sampled_from([OK, FAIL, FAIL, FAIL]), st.floats(0, 8)),
        max_size=300,
    ),
)
def test_ejected_count_never_exceeds_the_cap(
    n: int, percent: float, events: list[tuple[int, Outcome, float]]
) -> None:
    cfg = OutlierConfig(
        consecutive_failures=2,
        failure_percentage=0.5,
        request_volume=3,
        base_ejection=5.0,
        max_ejection=20.0,
        max_ejection_percent=percent,
    )
    d = OutlierDetector(cfg, hosts(n))
    cap = max(1, math.floor(n * percent + 1e-9))
    now = T0
    next_sweep = T0 + cfg.interval
    for i, outcome, gap in events:
        now += gap
        if now >= next_sweep:
            d.sweep(now)
            next_sweep = now + cfg.interval
        d.record(f"b/h{i % n}", outcome, now)
        assert len(d.ejected(now)) <= cap
        for s in d.status(now):
            assert 0 <= s.times <= 4


# --- failure percentage --------------------------------------------------------------------


def pct_config(**kw: float) -> OutlierConfig:
    base: dict[str, float] = {
        "consecutive_failures": 0,
        "failure_percentage": 0.5,
        "request_volume": 10,
        "max_ejection_percent": 1.0,
    }
    base.update(kw)
    return OutlierConfig(**base)  # type: ignore[arg-type]


def test_failure_percentage_ejects_at_the_threshold_with_enough_volume() -> None:
    d = OutlierDetector(pct_config(), hosts(3))
    for _ in range(5):
        d.record("b/h0", FAIL, T0)
        d.record("b/h0", OK, T0)  # exactly 50 % of 10
        d.record("b/h1", FAIL, T0)
        d.record("b/h1", OK, T0)
    d.record("b/h1", OK, T0)  # 5 of 11: below
    for _ in range(4):
        d.record("b/h2", FAIL, T0)  # 100 % but only 4 calls
    assert d.sweep(T0 + 10) == [Ejection("b/h0", PERCENTAGE, T0 + 40, 1)]
    assert d.ejected(T0 + 10) == frozenset({"b/h0"})


def test_sweep_starts_a_new_interval() -> None:
    d = OutlierDetector(pct_config(), hosts(2))
    for _ in range(9):
        d.record("b/h0", FAIL, T0)
    assert d.sweep(T0 + 10) == []
    d.record("b/h0", FAIL, T0 + 11)  # 1 of 1 in the new interval, not 10 of 10
    assert d.sweep(T0 + 20) == []


def test_failure_percentage_needs_minimum_hosts_with_volume() -> None:
    d = OutlierDetector(pct_config(minimum_hosts=2), hosts(3))
    for _ in range(10):
        d.record("b/h0", FAIL, T0)
    assert d.sweep(T0 + 10) == []
    for _ in range(10):
        d.record("b/h0", FAIL, T0 + 11)
        d.record("b/h1", OK, T0 + 11)
    assert [e.endpoint for e in d.sweep(T0 + 20)] == ["b/h0"]


def test_failure_percentage_ejects_worst_first_within_the_cap() -> None:
    d = OutlierDetector(pct_config(max_ejection_percent=0.5), hosts(4))  # cap 2
    plan = {"b/h0": 6, "b/h1": 10, "b/h2": 8, "b/h3": 0}
    for h, fails in plan.items():
        for i in range(10):
            d.record(h, FAIL if i < fails else OK, T0)
    assert [e.endpoint for e in d.sweep(T0 + 10)] == ["b/h1", "b/h2"]


def test_failure_percentage_disabled_by_default() -> None:
    d = OutlierDetector(OutlierConfig(consecutive_failures=0), hosts(2))
    for _ in range(100):
        d.record("b/h0", FAIL, T0)
    assert d.sweep(T0 + 10) == []


# --- reload --------------------------------------------------------------------------------


def test_with_endpoints_keeps_state_of_kept_ids() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(3))
    fail_streak(d, "b/h0", 5, T0)
    fail_streak(d, "b/h1", 3, T0)
    d2 = d.with_endpoints(["b/h1", "b/h0", "b/new"])
    assert d2.config is d.config
    assert d2.endpoints == ("b/h1", "b/h0", "b/new")
    assert d2.is_ejected("b/h0", T0 + 1)
    assert not d2.is_ejected("b/new", T0 + 1)
    assert fail_streak(d2, "b/h1", 2, T0 + 1) is None  # capped: 1 of 3 already ejected
    # late reports through the old detector still count in the new one (shared state)
    d.record("b/h1", OK, T0 + 2)
    assert d2.status(T0 + 2)[0].consecutive_failures == 0


def test_with_endpoints_recomputes_the_cap() -> None:
    d = OutlierDetector(OutlierConfig(), hosts(2))  # cap 1
    d2 = d.with_endpoints(hosts(4))  # cap 2
    assert fail_streak(d2, "b/h0", 5, T0) is not None
    assert fail_streak(d2, "b/h1", 5, T0) is not None
    assert fail_streak(d2, "b/h2", 5, T0) is None


def test_duplicate_endpoints_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        OutlierDetector(OutlierConfig(), ["a", "a"])


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consecutive_failures": -1}, "consecutive_failures"),
        ({"interval": 0}, "interval"),
        ({"failure_percentage": 1.5}, "failure_percentage"),
        ({"request_volume": 0}, "request_volume"),
        ({"minimum_hosts": 0}, "minimum_hosts"),
        ({"base_ejection": 0}, "base_ejection"),
        ({"max_ejection": 10.0}, "max_ejection"),
        ({"max_ejection_percent": 50}, "max_ejection_percent"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierConfig(**kwargs)  # type: ignore[arg-type]
