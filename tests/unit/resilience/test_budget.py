"""Token budget: exact token arithmetic, the cap, and the bound on extra attempts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.resilience.budget import BudgetConfig, TokenBudget


def test_starts_at_reserve_and_spends_whole_tokens() -> None:
    b = TokenBudget(ratio=0.2, reserve=3.0)
    assert b.balance == 3.0
    assert [b.try_spend() for _ in range(4)] == [True, True, True, False]
    assert b.balance == 0.0


def test_failed_spend_takes_nothing() -> None:
    b = TokenBudget(ratio=0.5, reserve=0.0)
    b.deposit()
    assert not b.try_spend()
    assert b.balance == 0.5
    b.deposit()
    assert b.can_spend()
    assert b.try_spend()
    assert b.balance == 0.0


def test_ten_deposits_at_ten_percent_earn_exactly_one_token() -> None:
    # a float sum would reach 0.9999999999999999 and deny the token
    b = TokenBudget(ratio=0.1, reserve=0.0)
    for _ in range(9):
        b.deposit()
    assert not b.can_spend()
    b.deposit()
    assert b.balance == 1.0
    assert b.try_spend()


def test_twenty_percent_allows_one_retry_per_five_requests() -> None:
    b = TokenBudget(ratio=0.2, reserve=0.0)
    granted = 0
    for _ in range(100):
        b.deposit()
        if b.try_spend():
            granted += 1
    assert granted == 20


def test_balance_never_exceeds_cap() -> None:
    b = TokenBudget(ratio=0.2, reserve=3.0, cap=10.0)
    for _ in range(1000):
        b.deposit()
    assert b.balance == 10.0
    assert b.capacity == 10.0


def test_reserve_above_cap_raises_the_capacity() -> None:
    b = TokenBudget(ratio=1.0, reserve=20.0, cap=10.0)
    assert b.balance == 20.0
    b.deposit()
    assert b.balance == 20.0
    assert b.capacity == 20.0


def test_zero_ratio_grants_only_the_reserve() -> None:
    b = TokenBudget(ratio=0.0, reserve=2.0)
    for _ in range(100):
        b.deposit()
    assert [b.try_spend() for _ in range(3)] == [True, True, False]


@given(
    ratio=st.floats(min_value=0.0, max_value=2.0),
    reserve=st.floats(min_value=0.0, max_value=20.0),
    ops=st.lists(st.booleans(), max_size=300),
)
def test_extra_attempts_bounded_by_reserve_plus_ratio_times_requests(
    ratio: float, reserve: float, ops: list[bool]
) -> None:
    b = TokenBudget(ratio=ratio, reserve=reserve)
    deposits = spent = 0
    for is_request in ops:
        if is_request:
            b.deposit()
            deposits += 1
        elif b.try_spend():
            spent += 1
        assert 0.0 <= b.balance <= b.capacity
        assert spent <= reserve + ratio * deposits + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": float("inf")}, "ratio"),
        ({"ratio": 0.2, "reserve": -1.0}, "reserve"),
        ({"ratio": 0.2, "cap": float("inf")}, "cap"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBudget(**kwargs)


def test_config_round_trip() -> None:
    cfg = BudgetConfig(ratio=0.1, reserve=1.0, cap=5.0)
    b = TokenBudget.from_config(cfg)
    assert b.config == cfg
    assert b.balance == 1.0
    assert "ratio=0.1" in repr(b)
