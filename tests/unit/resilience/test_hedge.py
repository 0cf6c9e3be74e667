"""Hedging decisions: fixed and adaptive delays, the extra-attempt cap, deadline and budget."""

from __future__ import annotations

import pytest

from gateway.resilience.budget import TokenBudget
from gateway.resilience.hedge import (
    MIN_HEDGE_TIME,
    HedgeConfig,
    HedgeDecision,
    HedgePolicy,
    HedgeReason,
)

H = HedgeReason


def test_fixed_delay_ignores_recent_latency() -> None:
    policy = HedgePolicy(HedgeConfig(delay=0.01))
    assert not policy.adaptive
    assert policy.delay(None) == 0.01
    assert policy.delay(0.5) == 0.01


def test_adaptive_delay_is_the_clamped_recent_percentile() -> None:
    policy = HedgePolicy(HedgeConfig(percentile=0.95, min_delay=0.005, max_delay=1.0))
    assert policy.adaptive
    assert policy.delay(0.12) == 0.12
    assert policy.delay(0.001) == 0.005
    assert policy.delay(3.0) == 1.0
    assert policy.delay(0.0) == 0.005


@pytest.mark.parametrize("recent", [None, float("nan"), -0.1])
def test_adaptive_without_recent_data_does_not_hedge(recent: float | None) -> None:
    assert HedgePolicy(HedgeConfig(percentile=0.95)).delay(recent) is None


def test_hedges_up_to_max_extra() -> None:
    policy = HedgePolicy(HedgeConfig(delay=0.01, max_extra=2))
    assert policy.max_extra == 2
    assert policy.decide(0, 1.0, 0.01, None) == HedgeDecision(True, H.HEDGING)
    assert policy.decide(1, 1.0, 0.01, None).hedge
    assert policy.decide(2, 1.0, 0.01, None) == HedgeDecision(False, H.MAX_EXTRA_REACHED)
    assert not policy.should_hedge(2, 1.0, 0.01, None)


def test_no_hedge_when_the_deadline_leaves_no_room() -> None:
    policy = HedgePolicy(HedgeConfig(delay=0.1))
    assert policy.decide(0, 0.1, 0.1, None).reason is H.NO_TIME_LEFT
    assert policy.decide(0, 0.05, 0.1, None).reason is H.NO_TIME_LEFT
    assert policy.decide(0, -1.0, 0.1, None).reason is H.NO_TIME_LEFT
    assert policy.should_hedge(0, 0.11, 0.1, None)
    zero = HedgePolicy(HedgeConfig(delay=0.0))
    assert zero.decide(0, MIN_HEDGE_TIME, 0.0, None).reason is H.NO_TIME_LEFT
    assert zero.should_hedge(0, 0.01, 0.0, None)


def test_budget_is_consulted_last_and_spent_only_on_yes() -> None:
    policy = HedgePolicy(HedgeConfig(delay=0.01))
    budget = TokenBudget(ratio=0.0, reserve=1.0)
    assert not policy.should_hedge(1, 1.0, 0.01, budget)  # max_extra reached
    assert not policy.should_hedge(0, 0.005, 0.01, budget)  # no room
    assert budget.balance == 1.0
    assert policy.should_hedge(0, 1.0, 0.01, budget)
    assert budget.balance == 0.0
    assert policy.decide(0, 1.0, 0.01, budget) == HedgeDecision(False, H.BUDGET_EXHAUSTED)


def test_budget_keeps_hedges_to_ten_percent_when_everything_is_slow() -> None:
    policy = HedgePolicy(HedgeConfig(percentile=0.95, budget_ratio=0.1))
    budget = policy.new_budget(reserve=1.0)
    hedges = 0
    for _ in range(1000):  # every request passes its hedge delay
        budget.deposit()
        if policy.should_hedge(0, 1.0, 0.05, budget):
            hedges += 1
    assert hedges == 101  # reserve 1 + 10 % of 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"delay": 0.01, "percentile": 0.95}, "exactly one"),
        ({"delay": -0.01}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"percentile": 1.0}, "percentile"),
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 0.95, "min_delay": -1.0}, "min_delay"),
        ({"percentile": 0.95, "min_delay": 0.5, "max_delay": 0.1}, "max_delay"),
        ({"delay": 0.01, "max_extra": 0}, "max_extra"),
        ({"delay": 0.01, "max_extra": 1.5}, "max_extra"),
        ({"delay": 0.01, "budget_ratio": -0.1}, "budget_ratio"),
    ],
)
def test_config_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HedgeConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    cfg = HedgeConfig(percentile=0.95)
    assert (cfg.min_delay, cfg.max_delay, cfg.max_extra, cfg.budget_ratio) == (
        0.005,
        1.0,
        1,
        0.1,
    )
    assert HedgePolicy(cfg).config is cfg
    assert [r.value for r in HedgeReason] == [
        "hedging",
        "max_extra_reached",
        "no_time_left",
        "budget_exhausted",
    ]
