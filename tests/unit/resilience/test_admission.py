"""Admission: limiter bookkeeping, priority eviction, gradient limit, token bucket."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.resilience.admission import (
    AdmissionConfig,
    ConcurrencyLimiter,
    GradientLimit,
    Offer,
    TokenBucket,
    Verdict,
)

T0 = 1000.0
ADMIT, QUEUE, SHED = Verdict.ADMIT, Verdict.QUEUE, Verdict.SHED


# --- ConcurrencyLimiter --------------------------------------------------------------------


def test_admits_up_to_the_limit_then_sheds_without_a_queue() -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=2))
    assert lim.offer(0, T0) == Offer(ADMIT, None, None)
    assert lim.offer(0, T0).verdict is ADMIT
    assert lim.offer(4, T0) == Offer(SHED, None, None)
    assert (lim.in_flight, lim.queued, lim.limit) == (2, 0, 2)
    assert lim.release(T0) is None
    assert lim.in_flight == 1
    assert lim.offer(0, T0).verdict is ADMIT


def test_queued_tickets_take_freed_slots_highest_priority_first_fifo_within() -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=1, queue=5))
    assert lim.offer(2, T0).verdict is ADMIT
    tickets = {}
    for name, prio in [("a1", 1), ("b3", 3), ("c1", 1), ("d3", 3), ("e2", 2)]:
        offer = lim.offer(prio, T0)
        assert offer.verdict is QUEUE and offer.evicted is None and offer.ticket is not None
        tickets[offer.ticket] = name
    assert lim.queued == 5
    order = []
    for _ in range(5):
        t = lim.release(T0)
        assert t is not None
        order.append(tickets[t])
        assert lim.in_flight == 1  # the slot passed straight on
    assert order == ["b3", "d3", "e2", "a1", "c1"]
    assert lim.release(T0) is None
    assert (lim.in_flight, lim.queued) == (0, 0)


def test_full_queue_evicts_the_newest_lowest_priority_ticket() -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=1, queue=3))
    lim.offer(0, T0)
    low_old = lim.offer(0, T0).ticket
    mid = lim.offer(1, T0).ticket
    low_new = lim.offer(0, T0).ticket
    assert lim.queued == 3
    # equal to the lowest queued priority: shed, nobody evicted
    assert lim.offer(0, T0) == Offer(SHED, None, None)
    hi = lim.offer(2, T0)
    assert hi.verdict is QUEUE and hi.evicted == low_new
    hi2 = lim.offer(3, T0)
    assert hi2.evicted == low_old
    hi3 = lim.offer(3, T0)
    assert hi3.evicted == mid
    # the queue now holds only priorities 2 and 3: a 2 cannot get in
    assert lim.offer(2, T0).verdict is SHED
    assert [lim.release(T0) for _ in range(3)] == [hi2.ticket, hi3.ticket, hi.ticket]


def test_evicted_and_admitted_tickets_cannot_be_cancelled() -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=1, queue=1))
    lim.offer(0, T0)
    low = lim.offer(0, T0).ticket
    high = lim.offer(1, T0)
    assert high.evicted == low
    assert low is not None and not lim.cancel(low)
    assert lim.release(T0) == high.ticket
    assert high.ticket is not None and not lim.cancel(high.ticket)


def test_cancel_removes_a_queued_ticket() -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=1, queue=2))
    lim.offer(0, T0)
    a = lim.offer(1, T0).ticket
    b = lim.offer(1, T0).ticket
    assert a is not None and lim.cancel(a)
    assert not lim.cancel(a)
    assert lim.queued == 1
    assert lim.release(T0) == b
    assert lim.release(T0) is None


def test_release_more_than_admitted_does_not_go_negative() -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=1))
    assert lim.release(T0) is None
    assert lim.in_flight == 0


class FixedLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: list[tuple[float, int, float]] = []

    def update(self, rtt: float, in_flight: int, now: float) -> int:
        self.seen.append((rtt, in_flight, now))
        return self.limit


def test_adaptive_limit_source_is_followed_and_fed_on_release() -> None:
    source = FixedLimit(3)
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=100, queue=10), source)
    assert lim.limit == 3
    for _ in range(3):
        assert lim.offer(0, T0).verdict is ADMIT
    q = lim.offer(0, T0)
    assert q.verdict is QUEUE
    source.limit = 1  # the limit dropped below what is in flight
    assert lim.release(T0 + 1, rtt=0.25) is None
    assert source.seen == [(0.25, 3, T0 + 1)]
    assert lim.release(T0 + 1) is None
    assert lim.in_flight == 1
    assert lim.release(T0 + 2) == q.ticket  # 0 in flight < 1
    assert lim.in_flight == 1


def test_admission_config_validation() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        AdmissionConfig(max_concurrency=0)
    with pytest.raises(ValueError, match="queue"):
        AdmissionConfig(max_concurrency=1, queue=-1)
    with pytest.raises(ValueError, match="queue_timeout"):
        AdmissionConfig(max_concurrency=1, queue_timeout=-0.1)


@settings(max_examples=200)
@given(
    st.integers(1, 5),
    st.integers(0, 4),
    st.lists(
        st.one_of(
            st.tuples(st.just("offer"), st.integers(0, 3)),
            st.tuples(st.just("release"), st.just(0)),
            st.tuples(st.just("cancel"), st.integers(0, 30)),
        ),
        max_size=200,
    ),
)
def test_limiter_never_exceeds_its_limit_or_queue(
    limit: int, queue: int, ops: list[tuple[str, int]]
) -> None:
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=limit, queue=queue))
    running = 0
    waiting: dict[int, int] = {}  # ticket → priority, as the async caller would track it
    for op, arg in ops:
        if op == "offer":
            offer = lim.offer(arg, T0)
            if offer.evicted is not None:
                evicted_prio = waiting.pop(offer.evicted)
                assert evicted_prio < arg
                assert evicted_prio == min([*waiting.values(), evicted_prio])
            if offer.verdict is ADMIT:
                assert offer.ticket is None
                running += 1
            elif offer.verdict is QUEUE:
                assert offer.ticket is not None
                waiting[offer.ticket] = arg
        elif op == "release" and running:
            ticket = lim.release(T0)
            running -= 1
            if ticket is not None:
                prio = waiting.pop(ticket)
                assert prio == max([*waiting.values(), prio])
                running += 1
        elif op == "cancel" and waiting:
            ticket = sorted(waiting)[arg % len(waiting)]
            assert lim.cancel(ticket)
            del waiting[ticket]
        assert lim.in_flight == running <= limit
        assert lim.queued == len(waiting) <= queue
        if waiting:
            assert running == limit  # nobody waits while a slot is free


# --- GradientLimit -------------------------------------------------------------------------


def test_steady_latency_lets_the_limit_grow() -> None:
    g = GradientLimit(initial=20, max_limit=1000)
    limits = [g.update(0.1, in_flight=g.limit, now=T0 + i) for i in range(10)]
    assert limits == [20, 21, 22, 23, 24, 24, 25, 26, 27, 28]  # +0.8 per sample
    for i in range(500):
        g.update(0.1, in_flight=g.limit, now=T0 + 10 + i)
    assert g.limit > 300


def test_rising_latency_lowers_the_limit() -> None:
    g = GradientLimit(initial=50)
    for i in range(50):
        g.update(0.1, in_flight=g.limit, now=T0 + i)
    before = g.limit
    limits = [g.update(0.5, in_flight=g.limit, now=T0 + 100 + i) for i in range(20)]
    assert limits[0] < before
    assert all(b <= a for a, b in itertools.pairwise(limits))
    assert limits[-1] < before / 2


def test_latency_within_tolerance_does_not_shrink_the_limit() -> None:
    g = GradientLimit(initial=50, tolerance=1.5)
    for i in range(20):
        g.update(0.1, in_flight=g.limit, now=T0 + i)
    before = g.limit
    assert g.update(0.149, in_flight=g.limit, now=T0 + 20) >= before


def test_limit_is_floored_and_capped() -> None:
    g = GradientLimit(initial=5, min_limit=3, max_limit=6)
    for i in range(20):
        g.update(0.1, in_flight=g.limit, now=T0 + i)
    assert g.limit == 6
    for i in range(200):
        g.update(10.0 * (i + 1), in_flight=g.limit, now=T0 + 100 + i)
    assert g.limit == 3


def test_app_limited_scope_does_not_grow() -> None:
    g = GradientLimit(initial=20)
    for i in range(100):
        assert g.update(0.1, in_flight=9, now=T0 + i) == 20


def test_recovers_after_latency_returns_to_normal() -> None:
    g = GradientLimit(initial=40)
    for i in range(20):
        g.update(0.1, in_flight=g.limit, now=T0 + i)
    for i in range(30):
        g.update(1.0, in_flight=g.limit, now=T0 + 20 + i)
    low = g.limit
    for i in range(100):
        g.update(0.1, in_flight=g.limit, now=T0 + 50 + i)
    assert g.limit > low + 20
    assert g.long_rtt < 0.5


def test_non_positive_rtt_is_ignored() -> None:
    g = GradientLimit(initial=20)
    assert g.update(0.0, in_flight=20, now=T0) == 20
    assert g.long_rtt == 0.0


def test_gradient_limit_plugs_into_the_limiter() -> None:
    g = GradientLimit(initial=2, max_limit=10)
    lim = ConcurrencyLimiter(AdmissionConfig(max_concurrency=10), g)
    assert lim.limit == 2
    lim.offer(0, T0)
    lim.offer(0, T0)
    assert lim.offer(0, T0).verdict is SHED
    for i in range(20):
        lim.release(T0 + i, rtt=0.05)
        lim.offer(0, T0 + i)
    assert lim.limit > 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": 5, "max_limit": 4, "initial": 4}, "max_limit"),
        ({"initial": 2000}, "initial"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"tolerance": 0.9}, "tolerance"),
        ({"long_window": 0}, "long_window"),
        ({"queue_size": -1}, "queue_size"),
        ({"warmup": 0}, "warmup"),
    ],
)
def test_gradient_limit_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GradientLimit(**kwargs)  # type: ignore[arg-type]


# --- TokenBucket ---------------------------------------------------------------------------


def test_token_bucket_starts_full_and_refills() -> None:
    b = TokenBucket(rate=2.0, burst=3.0)
    assert [b.try_take(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.try_take(T0) == 0.5  # one token takes 1/rate
    assert b.try_take(T0 + 0.25) == 0.25  # half a token banked meanwhile, nothing taken
    assert b.try_take(T0 + 0.5) == 0.0
    assert b.tokens(T0 + 0.5) == 0.0


def test_token_bucket_refill_is_capped_at_burst() -> None:
    b = TokenBucket(rate=10.0, burst=5.0)
    b.try_take(T0, 5.0)
    assert b.tokens(T0 + 3600) == 5.0
    assert b.try_take(T0 + 3600, 5.0) == 0.0
    assert b.try_take(T0 + 3600, 1.0) == pytest.approx(0.1)


def test_token_bucket_refill_tolerates_float_dust() -> None:
    b = TokenBucket(rate=10.0, burst=1.0)
    now = T0
    assert b.try_take(now) == 0.0
    for _ in range(100):
        now += 0.1
        assert b.try_take(now) == 0.0


def test_token_bucket_more_than_burst_never_fits() -> None:
    b = TokenBucket(rate=1.0, burst=2.0)
    assert b.try_take(T0, 3.0) == math.inf
    assert b.tokens(T0) == 2.0


def test_token_bucket_ignores_time_going_backwards() -> None:
    b = TokenBucket(rate=1.0, burst=1.0)
    assert b.try_take(T0) == 0.0
    assert b.try_take(T0 - 10) == 1.0
    assert b.try_take(T0 + 1) == 0.0


def test_token_bucket_validation() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0.0, burst=1.0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=1.0, burst=0.0)


@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 3.0)), max_size=100))
def test_token_bucket_never_grants_more_than_rate_times_time_plus_burst(
    events: list[tuple[float, float]],
) -> None:
    rate, burst = 5.0, 3.0
    b = TokenBucket(rate, burst)
    now = T0
    granted = 0.0
    for gap, n in events:
        now += gap
        wait = b.try_take(now, n)
        if wait == 0.0:
            granted += n
        else:
            assert wait > 0.0
    assert granted <= burst + rate * (now - T0) + 1e-6
