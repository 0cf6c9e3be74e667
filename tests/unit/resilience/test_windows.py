"""Sliding windows: exact expiry with explicit `now`, and exact percentiles."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.resilience.windows import (
    CountWindowCounter,
    LatencyWindow,
    PeakEwma,
    TimeWindowCounter,
    WindowTotals,
)

T0 = 1000.0


# --- TimeWindowCounter ---------------------------------------------------------------------


def test_time_window_counts_and_rates() -> None:
    w = TimeWindowCounter(10.0, buckets=10)
    w.record(T0, failed=False, slow=False)
    w.record(T0 + 0.5, failed=True, slow=False)
    w.record(T0 + 1.0, failed=False, slow=True)
    t = w.totals(T0 + 1.0)
    assert t == WindowTotals(calls=3, failures=1, slow=1)
    assert t.failure_rate == pytest.approx(1 / 3)
    assert t.slow_rate == pytest.approx(1 / 3)


def test_empty_totals_have_zero_rates() -> None:
    t = TimeWindowCounter(10.0).totals(T0)
    assert t == WindowTotals(0, 0, 0)
    assert t.failure_rate == 0.0
    assert t.slow_rate == 0.0


def test_time_window_bucket_expires_exactly_one_window_after_its_start() -> None:
    # 1 s buckets; a call at 1000.5 sits in the bucket [1000, 1001) which leaves the
    # window once the ring reaches the bucket [1010, 1011).
    w = TimeWindowCounter(10.0, buckets=10)
    w.record(T0 + 0.5, failed=True, slow=False)
    w.record(T0 + 3.0, failed=False, slow=False)
    assert w.totals(T0 + 9.999).calls == 2
    assert w.totals(T0 + 10.0) == WindowTotals(1, 0, 0)
    assert w.totals(T0 + 12.999).calls == 1
    assert w.totals(T0 + 13.0).calls == 0


def test_time_window_jump_longer_than_window_clears_everything() -> None:
    w = TimeWindowCounter(10.0, buckets=10)
    for i in range(50):
        w.record(T0 + i * 0.1, failed=True, slow=True)
    assert w.totals(T0 + 5.0).calls == 50
    assert w.totals(T0 + 1000.0) == WindowTotals(0, 0, 0)
    w.record(T0 + 1000.0, failed=False, slow=False)
    assert w.totals(T0 + 1000.0) == WindowTotals(1, 0, 0)


def test_time_window_late_report_counts_in_newest_bucket() -> None:
    w = TimeWindowCounter(10.0, buckets=10)
    w.record(T0 + 5.0, failed=False, slow=False)
    w.record(T0 + 4.0, failed=True, slow=False)  # clock read earlier, reported later
    assert w.totals(T0 + 5.0) == WindowTotals(2, 1, 0)
    # both expire with the newest bucket, never earlier
    assert w.totals(T0 + 14.999).calls == 2
    assert w.totals(T0 + 15.0).calls == 0


def test_time_window_reset() -> None:
    w = TimeWindowCounter(10.0)
    w.record(T0, failed=True, slow=True)
    w.reset()
    assert w.totals(T0) == WindowTotals(0, 0, 0)
    w.record(T0 + 1, failed=True, slow=False)
    assert w.totals(T0 + 1) == WindowTotals(1, 1, 0)


@pytest.mark.parametrize(
    ("window", "buckets", "message"),
    [(0.0, 10, "window"), (-1.0, 10, "window"), (math.inf, 10, "window"), (10.0, 0, "buckets")],
)
def test_time_window_rejects_bad_settings(window: float, buckets: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimeWindowCounter(window, buckets)


@given(
    st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans(), st.booleans()), min_size=1, max_size=200)
)
def test_time_window_matches_a_brute_force_count(events: list[tuple[float, bool, bool]]) -> None:
    window, buckets = 8.0, 4  # 2 s buckets
    w = TimeWindowCounter(window, buckets)
    now = T0
    kept: list[tuple[int, bool, bool]] = []
    for gap, failed, slow in events:
        now += gap
        w.record(now, failed, slow)
        kept.append((int(now // 2.0), failed, slow))
        head = int(now // 2.0)
        live = [k for k in kept if k[0] > head - buckets]
        expected = WindowTotals(len(live), sum(f for _, f, _ in live), sum(s for _, _, s in live))
        assert w.totals(now) == expected


# --- CountWindowCounter --------------------------------------------------------------------


def test_count_window_keeps_the_last_size_calls() -> None:
    w = CountWindowCounter(3)
    w.record(T0, failed=True, slow=False)
    w.record(T0, failed=False, slow=True)
    assert w.totals(T0) == WindowTotals(2, 1, 1)
    w.record(T0, failed=True, slow=True)
    assert w.totals(T0) == WindowTotals(3, 2, 2)
    w.record(T0, failed=False, slow=False)  # pushes out the first (failed) call
    assert w.totals(T0) == WindowTotals(3, 1, 2)
    w.record(T0, failed=False, slow=False)  # pushes out the slow one
    assert w.totals(T0) == WindowTotals(3, 1, 1)


def test_count_window_ignores_time() -> None:
    w = CountWindowCounter(2)
    w.record(T0, failed=True, slow=False)
    assert w.totals(T0 + 1e6) == WindowTotals(1, 1, 0)


def test_count_window_reset_and_validation() -> None:
    w = CountWindowCounter(2)
    w.record(T0, failed=True, slow=True)
    w.reset()
    assert w.totals(T0) == WindowTotals(0, 0, 0)
    with pytest.raises(ValueError, match="size"):
        CountWindowCounter(0)


@given(st.integers(1, 12), st.lists(st.tuples(st.booleans(), st.booleans()), max_size=100))
def test_count_window_matches_a_brute_force_count(
    size: int, events: list[tuple[bool, bool]]
) -> None:
    w = CountWindowCounter(size)
    for i, (failed, slow) in enumerate(events):
        w.record(T0 + i, failed, slow)
        live = events[max(0, i + 1 - size) : i + 1]
        assert w.totals(T0 + i) == WindowTotals(
            len(live), sum(f for f, _ in live), sum(s for _, s in live)
        )


# --- LatencyWindow -------------------------------------------------------------------------


def test_percentile_is_none_below_min_samples() -> None:
    lw = LatencyWindow()
    for i in range(19):
        lw.record(T0, 0.01 * (i + 1))
    assert lw.count(T0) == 19
    assert lw.percentile(0.95, T0) is None
    lw.record(T0, 0.2)
    assert lw.percentile(0.95, T0) == pytest.approx(0.19)
    assert lw.percentile(0.95, T0, min_samples=100) is None


def test_percentile_nearest_rank_exact() -> None:
    lw = LatencyWindow()
    for ms in range(100, 0, -1):  # 1..100 ms, out of order
        lw.record(T0, ms / 1000)
    assert lw.percentile(0.5, T0) == 0.05
    assert lw.percentile(0.95, T0) == 0.095
    assert lw.percentile(0.99, T0) == 0.099
    assert lw.percentile(1.0, T0) == 0.1
    assert lw.percentile(0.0, T0) == 0.001
    assert lw.percentiles([0.5, 0.99], T0) == [0.05, 0.099]


def test_percentile_rejects_percent_scale() -> None:
    lw = LatencyWindow()
    with pytest.raises(ValueError, match="fraction"):
        lw.percentile(95, T0)


def test_latency_window_expires_old_samples() -> None:
    lw = LatencyWindow(window=30.0, buckets=6)  # 5 s buckets
    for _ in range(20):
        lw.record(T0, 1.0)
    for _ in range(20):
        lw.record(T0 + 10.0, 0.1)
    assert lw.count(T0 + 10.0) == 40
    assert lw.percentile(0.95, T0 + 10.0) == 1.0
    # the bucket [1000, 1005) leaves at 1030
    assert lw.count(T0 + 29.999) == 40
    assert lw.count(T0 + 30.0) == 20
    assert lw.percentile(0.95, T0 + 30.0) == 0.1
    assert lw.count(T0 + 40.0) == 0
    assert lw.percentile(0.5, T0 + 40.0) is None


def test_latency_window_negative_latency_counts_as_zero() -> None:
    lw = LatencyWindow()
    for _ in range(20):
        lw.record(T0, -0.5)
    assert lw.percentile(1.0, T0) == 0.0


def test_full_bucket_keeps_count_and_bounded_samples() -> None:
    lw = LatencyWindow(window=30.0, buckets=6, max_samples_per_bucket=50)
    for i in range(10_000):
        lw.record(T0, (i % 100) / 1000)
    assert lw.count(T0) == 10_000
    p50 = lw.percentile(0.5, T0)
    assert p50 is not None and 0.035 <= p50 <= 0.065  # a sample of a uniform 0..99 ms


def test_busy_bucket_is_not_underweighted_by_sampling() -> None:
    # 5,000 fast calls in one bucket (sampled down to 64) and 60 slow calls in the next:
    # slow calls are ~1.2 % of traffic, so p95 must be fast, p99.5 slow.
    lw = LatencyWindow(window=30.0, buckets=6, max_samples_per_bucket=64)
    for _ in range(5000):
        lw.record(T0, 0.01)
    for _ in range(60):
        lw.record(T0 + 5.0, 1.0)
    assert lw.percentile(0.95, T0 + 5.0) == 0.01
    assert lw.percentile(0.995, T0 + 5.0) == 1.0


def test_latency_window_reset_and_validation() -> None:
    lw = LatencyWindow()
    for _ in range(30):
        lw.record(T0, 0.1)
    lw.reset()
    assert lw.count(T0) == 0
    with pytest.raises(ValueError, match="window"):
        LatencyWindow(window=0)
    with pytest.raises(ValueError, match="buckets"):
        LatencyWindow(buckets=0)
    with pytest.raises(ValueError, match="max_samples_per_bucket"):
        LatencyWindow(max_samples_per_bucket=0)


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=300), st.floats(0.0, 1.0))
def test_unsampled_percentile_matches_sorted_list(values: list[float], q: float) -> None:
    lw = LatencyWindow(max_samples_per_bucket=512)
    for v in values:
        lw.record(T0, v)
    s = sorted(values)
    assert lw.percentile(q, T0, min_samples=1) == s[max(0, math.ceil(q * len(s)) - 1)]


def test_sampled_percentile_is_close_to_truth() -> None:
    rng = random.Random(7)
    lw = LatencyWindow(max_samples_per_bucket=512)
    values = [rng.expovariate(10.0) for _ in range(20_000)]
    for i, v in enumerate(values):
        lw.record(T0 + i * 0.001, v)  # spread over 4 buckets
    truth = sorted(values)[int(0.95 * len(values))]
    p95 = lw.percentile(0.95, T0 + 20.0)
    assert p95 is not None and abs(p95 - truth) / truth < 0.15


# --- peak EWMA -----------------------------------------------------------------------------------


def test_peak_ewma_takes_a_slow_answer_at_once_and_forgets_it_over_decay() -> None:
    e = PeakEwma(decay=10.0)
    assert not e.observed and e.value(0.0) == 0.0
    e.observe(0.0, 0.02)
    assert e.observed and e.value(0.0) == 0.02
    e.observe(1.0, 0.4)  # a peak replaces the estimate whatever its weight
    assert e.value(1.0) == 0.4
    # fast answers pull it down with weight 1 - exp(-dt / decay): after one decay, e^-1 is left
    t = 1.0
    for _ in range(100):
        t += 0.1
        e.observe(t, 0.02)
    assert e.value(t) == pytest.approx(0.02 + (0.4 - 0.02) * math.exp(-1.0), rel=1e-9)


def test_peak_ewma_forgets_by_time_not_by_request_count() -> None:
    busy, quiet = PeakEwma(5.0), PeakEwma(5.0)
    for e in (busy, quiet):
        e.observe(0.0, 0.5)
    for k in range(1, 1001):  # 1000 fast answers in 5 s ...
        busy.observe(k * 0.005, 0.01)
    for k in range(1, 11):  # ... or 10 in the same 5 s
        quiet.observe(k * 0.5, 0.01)
    assert busy.value(5.0) == pytest.approx(quiet.value(5.0), rel=1e-9)


def test_peak_ewma_decays_toward_zero_while_nobody_asks() -> None:
    e = PeakEwma(decay=2.0)
    e.observe(0.0, 0.3)
    assert e.value(2.0) == pytest.approx(0.3 * math.exp(-1.0))
    assert e.value(20.0) < 0.3 * 1e-4
    # the next answer is weighed against the decayed estimate: it rises back toward it
    e.observe(20.0, 0.05)
    assert e.value(20.0) == pytest.approx(0.3 * math.exp(-10.0) + 0.05 * (1 - math.exp(-10.0)))


def test_peak_ewma_lower_bounds_raise_never_lower() -> None:
    e = PeakEwma(decay=10.0)
    e.observe_at_least(0.0, 0.0)  # a cancelled attempt that had not started says nothing
    assert not e.observed
    e.observe(0.0, 0.1)
    e.observe_at_least(0.5, 0.03)  # cancelled after 30 ms: no news for a 100 ms endpoint
    assert e.value(0.5) == pytest.approx(0.1 * math.exp(-0.05))
    e.observe_at_least(1.0, 0.7)  # timed out after 700 ms: it is at least that slow
    assert e.value(1.0) == 0.7


def test_peak_ewma_out_of_order_reports_do_not_move_time_back() -> None:
    e = PeakEwma(decay=1.0)
    e.observe(5.0, 0.2)
    e.observe(4.0, 0.1)  # reported late: weight 0, time stays at 5.0
    assert e.value(5.0) == 0.2
    e.reset()
    assert not e.observed and e.value(10.0) == 0.0


@pytest.mark.parametrize("decay", [0.0, -1.0, math.inf, math.nan])
def test_peak_ewma_needs_a_positive_decay(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        PeakEwma(decay)
