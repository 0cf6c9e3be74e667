"""Error budgets and burn rates with scripted events and a clock that only moves when told."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.slo.budget import (
    BURN_ALERTS,
    FAST_BURN,
    NOMINAL_WINDOW,
    BucketCounts,
    Severity,
    SliKind,
    SloBudget,
    SloConfig,
)

T0 = 1_800_000_000.0  # wall seconds, as the controller passes them


def config(objective: float = 0.999, window: float = NOMINAL_WINDOW) -> SloConfig:
    return SloConfig("avail", ("r",), SliKind.AVAILABILITY, objective, window)


def feed(budget: SloBudget, start: float, seconds: int, per_second: int, bad_every: int) -> float:
    """`per_second` events each second for `seconds`; every `bad_every`-th is bad (0: none)."""
    k = 0
    for s in range(seconds):
        for i in range(per_second):
            k += 1
            budget.record(start + s + i / per_second, bad_every > 0 and k % bad_every == 0)
    return start + seconds


def test_burn_rate_is_error_ratio_over_budget() -> None:
    b = SloBudget(config())
    now = feed(b, T0, 300, 10, bad_every=50)  # 2 % errors for 5 minutes
    st = b.status(now - 0.001)
    w5 = st.window_status("5m")
    assert w5.total == 3000 and w5.bad == 60
    assert w5.error_ratio == pytest.approx(0.02)
    assert w5.burn_rate == pytest.approx(20.0)  # 2 % / 0.1 %
    # the 1h window saw the same 5 minutes only
    assert st.window_status("1h").burn_rate == pytest.approx(20.0)
    assert st.fast_burn and st.severity is Severity.PAGE
    assert st.short_bad == 60


def test_below_the_fast_threshold_no_page_from_the_1h_pair() -> None:
    b = SloBudget(config())
    now = feed(b, T0, 300, 10, bad_every=100)  # 1 % = 10x: under 14.4x, over 6x
    st = b.status(now - 0.001)
    assert st.window_status("5m").burn_rate == pytest.approx(10.0)
    assert not st.fast_burn
    # 6x over 6h and 30m holds (the 6h window has seen only these 5 minutes, all at 10x)
    assert BURN_ALERTS[1] in st.burning and st.severity is Severity.PAGE


def test_short_window_clears_first_so_the_condition_releases() -> None:
    b = SloBudget(config())
    now = feed(b, T0, 600, 10, bad_every=20)  # 5 %: 50x for 10 minutes
    assert b.status(now - 0.001).fast_burn
    now = feed(b, now, 310, 10, bad_every=0)  # then clean for a little over 5 minutes
    st = b.status(now - 0.001)
    assert st.window_status("5m").bad == 0
    assert st.window_status("1h").burn_rate is not None
    assert st.window_status("1h").burn_rate > FAST_BURN.factor  # the long window remembers
    assert not st.fast_burn  # but the short one says it is over


def test_budget_remaining_counts_the_whole_window() -> None:
    b = SloBudget(config(objective=0.99))
    for i in range(1000):
        b.record(T0 + i, bad=i < 5)  # 5 bad of 1000: half of a 1 % budget
    st = b.status(T0 + 1000)
    assert (st.total, st.bad) == (1000, 5)
    assert st.budget_remaining == pytest.approx(0.5)
    assert SloBudget(config()).status(T0).budget_remaining == 1.0  # nothing seen: untouched


def test_old_events_leave_the_windows_and_memory_is_fixed() -> None:
    cfg = config()
    b = SloBudget(cfg)
    b.record(T0, bad=True)
    assert b.status(T0).window_status("5m").bad == 1
    later = T0 + 301
    assert b.status(later).window_status("5m").bad == 0
    assert b.status(later).window_status("30m").bad == 1
    # past the compliance window the event is gone from every sum
    gone = b.status(T0 + cfg.window + cfg.coarse_width * 2)
    assert gone.total == 0 and gone.budget_remaining == 1.0
    # many events far apart reuse the same slots
    for k in range(5000):
        b.record(T0 + k * 3600.0, bad=False)
    assert len(b._fine.good) == 2161 and len(b._coarse.good) == 721


def test_windows_scale_with_the_slo_window() -> None:
    cfg = config(window=7 * 86400.0)
    assert cfg.seconds("1h") == pytest.approx(3600 * 7 / 30)
    assert cfg.seconds("5m") == pytest.approx(70.0)
    b = SloBudget(cfg)
    # 70 s of 2 % errors fill the scaled 5m window; the scaled 1h window (14 min) too
    for i in range(700):
        b.record(T0 + i * 0.1, bad=i % 50 == 0)
    st = b.status(T0 + 69.99)
    assert st.window_status("5m").burn_rate == pytest.approx(20.0, rel=0.1)
    assert st.fast_burn


def test_blame_is_counted_for_bad_events_only() -> None:
    b = SloBudget(config())
    for i in range(100):
        b.record(T0 + i * 0.01, bad=i % 4 == 0, blame=i % 2 == 0)
    st = b.status(T0 + 1)
    assert st.short_bad == 25 and st.short_blame == 25
    b2 = SloBudget(config())
    b2.record(T0, bad=False, blame=True)
    assert b2.status(T0).short_blame == 0


def test_changed_buckets_are_handed_over_once_with_absolute_counts() -> None:
    b = SloBudget(config(), sharing=True)
    b.record(T0, bad=True)
    b.record(T0 + 0.5, bad=False)
    taken = b.take_changed()
    assert {(t.ring, t.good, t.bad) for t in taken} == {("f", 1, 1), ("c", 1, 1)}
    assert b.take_changed() == []
    # the upload failed: the same buckets go again, with what was counted since on top,
    # as absolute counts (so a store that did take the first try holds the same numbers)
    b.changed_again(taken)
    b.record(T0 + 0.6, bad=False)
    again = {t.ring: (t.good, t.bad) for t in b.take_changed()}
    assert again == {"f": (2, 1), "c": (2, 1)}
    b.record(T0 + 0.7, bad=False)
    assert {t.ring: (t.good, t.bad) for t in b.take_changed()} == {"f": (3, 1), "c": (3, 1)}


def test_adopting_shared_totals_keeps_what_was_counted_since() -> None:
    b = SloBudget(config(), sharing=True)
    b.record(T0, bad=True)
    taken = b.take_changed()
    for t in taken:
        b.stored(t)
    b.record(T0 + 1, bad=False)  # counted while the upload was under way
    fine = next(t for t in taken if t.ring == "f")
    # the store says: 7 good and 3 bad across replicas (this replica's 1 bad included)
    b.adopt(BucketCounts("f", fine.n, 7, 3, 0))
    coarse = next(t for t in taken if t.ring == "c")
    b.adopt(BucketCounts("c", coarse.n, 7, 3, 0))
    st = b.status(T0 + 1)
    assert st.window_status("5m").total == 11  # 10 shared + 1 not yet uploaded
    assert st.window_status("5m").bad == 3
    assert st.total == 11
    # adopting the same totals again changes nothing: nothing is counted twice
    b.adopt(BucketCounts("f", fine.n, 7, 3, 0))
    b.adopt(BucketCounts("c", coarse.n, 7, 3, 0))
    assert b.status(T0 + 1).total == 11


def test_buckets_the_rings_no_longer_span_are_forgotten() -> None:
    b = SloBudget(config(), sharing=True)
    b.record(T0, bad=True)
    b.take_changed()
    b.changed_again(BucketCounts(r, n, 0, 1, 0) for r, n in b.recent_buckets(T0, 0))
    b.record(T0 + 40 * 86400.0, bad=False)  # far past both rings' spans
    taken = b.take_changed()
    assert {t.n for t in taken} == {int((T0 + 40 * 86400.0) // b.width(t.ring)) for t in taken}


def test_a_budget_without_sharing_keeps_nothing_pending() -> None:
    b = SloBudget(config())
    b.record(T0, bad=True)
    assert b.take_changed() == []


def test_recent_buckets_cover_the_span_in_both_rings() -> None:
    cfg = config()
    b = SloBudget(cfg)
    keys = b.recent_buckets(T0, span=30.0)
    fine = [n for r, n in keys if r == "f"]
    coarse = [n for r, n in keys if r == "c"]
    assert fine[0] == int(T0 // cfg.fine_width) and len(fine) == 4
    assert len(coarse) == 2
    assert len(b.all_buckets(T0)) == 2161 + 721


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"objective": 1.0}, "objective"),
        ({"objective": 0.0}, "objective"),
        ({"window": 0.0}, "window"),
        ({"routes": ()}, "at least one route"),
        ({"latency_threshold": 0.3}, "latency"),
    ],
)
def test_config_refuses_nonsense(kw: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "name": "s", "routes": ("r",), "kind": SliKind.AVAILABILITY, "objective": 0.99,
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        SloConfig(**{**base, **kw})  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=4000.0), min_size=1, max_size=60),
    bads=st.lists(st.booleans(), min_size=60, max_size=60),
    later=st.floats(min_value=0.0, max_value=30000.0),
)
def test_window_sums_match_a_plain_count(gaps: list[float], bads: list[bool], later: float) -> None:
    """Bucketed sums equal a count of the events whose bucket lies in the window."""
    cfg = config()
    b = SloBudget(cfg)
    events = []
    t = T0
    for gap, bad in zip(gaps, bads, strict=False):
        t += gap
        b.record(t, bad)
        events.append((t, bad))
    now = t + later
    st_ = b.status(now)
    for w in st_.windows:
        width = cfg.fine_width if w.name in ("5m", "30m", "1h", "2h", "6h") else cfg.coarse_width
        length = round(cfg.seconds(w.name) / width)
        now_n = int(now // width)
        inside = [bad for (e, bad) in events if now_n - length < int(e // width) <= now_n]
        assert (w.total, w.bad) == (len(inside), sum(inside)), w.name
