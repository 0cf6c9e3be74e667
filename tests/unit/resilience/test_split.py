"""Weighted and sticky splits: shares, stickiness, and minimal movement when weights change."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.resilience.split import SplitEntry, WeightedSplit

KEYS_100K = [f"user-{i}" for i in range(100_000)]


def split(**weights: float) -> WeightedSplit:
    return WeightedSplit([SplitEntry(name, w) for name, w in weights.items()])


def canary_split(canary_pct: float, others: dict[str, float]) -> WeightedSplit:
    """`canary` at `canary_pct` %, the other backends sharing the rest in fixed proportion."""
    total = sum(others.values())
    rest = 100.0 - canary_pct
    entries = [SplitEntry(name, rest * w / total) for name, w in others.items()]
    return WeightedSplit([*entries, SplitEntry("canary", canary_pct)])


# --- pick ----------------------------------------------------------------------------------


def test_pick_maps_rnd_onto_cumulative_weights() -> None:
    s = split(a=95, b=5)
    assert s.pick(0.0) == "a"
    assert s.pick(0.9499) == "a"
    assert s.pick(0.95) == "b"
    assert s.pick(0.999999) == "b"
    assert s.pick(1.0) == "b"  # out of range input still picks a live backend


def test_pick_never_picks_zero_weight() -> None:
    s = split(a=0, b=50, c=0, d=50, e=0)
    assert s.backends == ("b", "d")
    assert {s.pick(i / 1000) for i in range(1000)} == {"b", "d"}
    assert s.pick(0.0) == "b"
    assert s.pick(0.5) == "d"


def test_pick_shares_match_weights() -> None:
    s = split(a=70, b=20, c=10)
    rng = random.Random(7)
    counts = Counter(s.pick(rng.random()) for _ in range(100_000))
    assert counts["a"] / 1e5 == pytest.approx(0.70, abs=0.01)
    assert counts["b"] / 1e5 == pytest.approx(0.20, abs=0.01)
    assert counts["c"] / 1e5 == pytest.approx(0.10, abs=0.01)


def test_single_backend() -> None:
    s = split(only=1)
    assert s.pick(0.3) == "only"
    assert s.pick_sticky("anyone") == "only"


def test_share_and_repr() -> None:
    s = split(a=3, b=1, c=0)
    assert s.share("a") == 0.75
    assert s.share("c") == 0.0
    assert s.share("missing") == 0.0
    assert repr(s) == "WeightedSplit(a=3, b=1, c=0)"
    assert [e.backend for e in s.entries] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "at least one"),
        ([SplitEntry("a", 0.0), SplitEntry("b", 0.0)], "more than 0"),
        ([SplitEntry("a", 1.0), SplitEntry("a", 2.0)], "more than once"),
    ],
)
def test_split_validation(entries: list[SplitEntry], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedSplit(entries)


@pytest.mark.parametrize(
    ("backend", "weight", "message"),
    [("", 1.0, "name"), ("a", -1.0, "weight"), ("a", float("nan"), "weight")],
)
def test_entry_validation(backend: str, weight: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitEntry(backend, weight)


# --- pick_sticky: shares ------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 95.0, "b": 5.0},
        {"a": 50.0, "b": 50.0},
        {"a": 60.0, "b": 30.0, "c": 10.0},
        {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.0},
    ],
)
def test_sticky_shares_within_one_percent_of_weights(weights: dict[str, float]) -> None:
    s = split(**weights)
    counts = Counter(s.pick_sticky(k) for k in KEYS_100K)
    total = sum(weights.values())
    for name, w in weights.items():
        assert counts[name] / len(KEYS_100K) == pytest.approx(w / total, abs=0.01), name


def test_sticky_random_byte_keys_share() -> None:
    rng = random.Random(42)
    s = split(stable=75, canary=25)
    counts = Counter(s.pick_sticky(rng.randbytes(16)) for _ in range(100_000))
    assert counts["canary"] / 1e5 == pytest.approx(0.25, abs=0.01)


def test_sticky_is_stable_across_processes() -> None:
    # pinned values: a change of hash function would move every user of every deployment
    s = split(a=50, b=50)
    assert "".join(s.pick_sticky(f"user-{i}") for i in range(24)) == "abbaabbbaabbbababaaabbaa"
    assert [s.pick_sticky(f"user-{i}".encode()) for i in range(8)] == [
        s.pick_sticky(f"user-{i}") for i in range(8)
    ]
    canary = split(stable=95, canary=5)
    on_canary = [i for i in range(200) if canary.pick_sticky(f"user-{i}") == "canary"]
    assert on_canary == [9, 13, 14, 24, 60, 79, 89, 111, 131, 165]


# --- pick_sticky: properties ----------------------------------------------------------------

keys = st.one_of(st.text(max_size=30), st.binary(max_size=30))
names = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12),
    min_size=1,
    max_size=5,
    unique=True,
).filter(lambda xs: "canary" not in xs)
weight = st.floats(min_value=0.01, max_value=1000.0)


@given(key=keys, weights=st.lists(weight, min_size=2, max_size=6))
def test_same_key_same_backend_while_weights_unchanged(
    key: str | bytes, weights: list[float]
) -> None:
    entries = [SplitEntry(f"b{i}", w) for i, w in enumerate(weights)]
    first = WeightedSplit(entries).pick_sticky(key)
    assert WeightedSplit(entries).pick_sticky(key) == first  # a new snapshot, same answer
    assert WeightedSplit(list(reversed(entries))).pick_sticky(key) == first  # order-free


@settings(max_examples=200)
@given(
    others=names.flatmap(
        lambda ns: st.tuples(st.just(ns), st.lists(weight, min_size=len(ns), max_size=len(ns)))
    ),
    low_high=st.tuples(
        st.floats(min_value=0.5, max_value=99.0), st.floats(min_value=0.5, max_value=99.0)
    ).filter(lambda p: p[0] != p[1]),
    key_list=st.lists(keys, min_size=1, max_size=50),
)
def test_changing_the_canary_weight_moves_keys_only_onto_or_off_it(
    others: tuple[list[str], list[float]],
    low_high: tuple[float, float],
    key_list: list[str | bytes],
) -> None:
    low, high = sorted(low_high)
    other_weights = dict(zip(*others, strict=True))
    before = canary_split(low, other_weights)
    after = canary_split(high, other_weights)
    for key in key_list:
        b, a = before.pick_sticky(key), after.pick_sticky(key)
        if b == "canary":
            assert a == "canary"  # raising keeps every canary user
        if a != "canary":
            assert a == b  # keys that move, move only onto the canary
    # and lowering is the exact reverse: keys leave only the canary
    for key in key_list:
        a, b = after.pick_sticky(key), before.pick_sticky(key)
        if a != "canary":
            assert b == a


def test_canary_5_to_25_percent_over_many_keys() -> None:
    others = {"v1": 60.0, "v1-eu": 40.0}
    at5, at25 = canary_split(5, others), canary_split(25, others)
    moved_on = 0
    on_canary_5 = 0
    for key in KEYS_100K[:20_000]:
        b, a = at5.pick_sticky(key), at25.pick_sticky(key)
        if b == "canary":
            on_canary_5 += 1
            assert a == "canary"
        elif a == "canary":
            moved_on += 1
        else:
            assert a == b
    assert on_canary_5 / 20_000 == pytest.approx(0.05, abs=0.01)
    assert (on_canary_5 + moved_on) / 20_000 == pytest.approx(0.25, abs=0.01)


def test_zero_weight_backend_gets_no_sticky_keys_and_keeps_others_in_place() -> None:
    with_zero = split(a=50, b=50, canary=0)
    without = split(a=50, b=50)
    for key in KEYS_100K[:5000]:
        assert with_zero.pick_sticky(key) == without.pick_sticky(key)


def test_remembered_sticky_answers_equal_fresh_ones_and_stay_bounded() -> None:
    from gateway.resilience import split as split_module

    s = WeightedSplit([SplitEntry("a", 70), SplitEntry("b", 30)])
    keys = [f"user-{i}" for i in range(2000)]
    first = [s.pick_sticky(k) for k in keys]
    again = [s.pick_sticky(k) for k in keys]  # from the memo
    fresh = WeightedSplit([SplitEntry("a", 70), SplitEntry("b", 30)])
    assert first == again == [fresh._rendezvous(k) for k in keys]
    for i in range(split_module.STICKY_MEMO_SIZE + 10):
        s.pick_sticky(f"flood-{i}")
    assert len(s._memo) <= split_module.STICKY_MEMO_SIZE
