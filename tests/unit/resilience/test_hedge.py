"""Hedging decisions: fixed and adaptive delays, the extra-attempt cap, deadline and budget."""

from __future__ import annotations

import math
import random

import pytest

from gateway.resilience.budget import TokenBudget
from gateway.resilience.hedge import (
    DEFAULT_HEADROOM,
    MIN_HEDGE_TIME,
    HedgeConfig,
    HedgeDecision,
    HedgeDelayEstimator,
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
        ({"delay": 0.01, "target": 0.05}, "exactly one"),
        ({"percentile": 0.95, "target": 0.05}, "exactly one"),
        ({"target": 0.0}, "target"),
        ({"target": 1.0, "budget_ratio": 1.0}, "target"),
        ({"target": 0.12, "budget_ratio": 0.1}, "must not exceed the budget"),
        ({"target": 0.08, "headroom": -0.1}, "headroom"),
        ({"target": 0.08, "headroom": math.nan}, "headroom"),
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


# --- adaptive (target) delays ---------------------------------------------------------------


def test_target_delay_is_the_quantile_with_headroom_clamped() -> None:
    policy = HedgePolicy(HedgeConfig(target=0.08, min_delay=0.005, max_delay=1.0))
    assert policy.adaptive
    assert policy.quantile == pytest.approx(0.92)
    assert DEFAULT_HEADROOM == 0.25
    assert policy.delay(0.02) == pytest.approx(0.025)
    assert policy.delay(0.001) == 0.005
    assert policy.delay(2.0) == 1.0
    assert policy.delay(None) is None
    assert HedgePolicy(HedgeConfig(target=0.08, headroom=0.0)).delay(0.02) == 0.02
    # a percentile delay is its quantile alone, as before
    p95 = HedgePolicy(HedgeConfig(percentile=0.95))
    assert p95.quantile == 0.95 and p95.delay(0.02) == 0.02
    assert HedgePolicy(HedgeConfig(delay=0.01)).quantile is None


def test_estimator_does_not_hedge_until_it_has_seen_enough_first_attempts() -> None:
    est = HedgePolicy(HedgeConfig(target=0.1)).new_estimator()
    for k in range(19):
        est.observe(k * 0.01, 0.02)
        assert est.delay(k * 0.01) is None
    est.observe(0.19, 0.02)
    assert est.delay(0.3) == pytest.approx(0.025)


def test_estimator_recomputes_at_most_every_refresh() -> None:
    est = HedgeDelayEstimator(HedgePolicy(HedgeConfig(target=0.1)), refresh=0.25, min_samples=1)
    est.observe(0.0, 0.02)
    assert est.delay(0.0) == pytest.approx(0.025)
    for _ in range(50):
        est.observe(0.1, 0.2)
    assert est.delay(0.2) == pytest.approx(0.025)  # cached
    assert est.delay(0.25) == pytest.approx(0.25)  # recomputed: now 50 of 51 are 200 ms


def test_estimator_forgets_first_attempts_older_than_its_window() -> None:
    est = HedgeDelayEstimator(HedgePolicy(HedgeConfig(target=0.1)), window=6.0, min_samples=5)
    for k in range(10):
        est.observe(k * 0.1, 0.3)
    assert est.delay(1.0) == pytest.approx(0.375)
    assert est.delay(8.0) is None  # a quiet spell longer than the window: cold again
    for k in range(10):
        est.observe(8.0 + k * 0.1, 0.02)
    assert est.delay(9.0) == pytest.approx(0.025)


def _bimodal_delay(
    config: HedgeConfig, tail: float, seed: int, fast: float = 0.020, jitter: float = 0.0
) -> float:
    """The delay after 1,000 requests at 50/s whose first attempts take `fast` (± jitter) or
    20x that for a `tail` share; hedged first attempts are overtaken 20 ms after the delay."""
    rng = random.Random(seed)
    policy = HedgePolicy(config)
    est = policy.new_estimator()
    now = 0.0
    for _ in range(1000):
        now += 0.02
        latency = fast * 20 if rng.random() < tail else fast * (1 + jitter * (2 * rng.random() - 1))
        delay = est.delay(now)
        if delay is not None and latency > delay:
            est.observe(now, delay + fast)  # overtaken by its hedge: at least this long
        else:
            est.observe(now, latency)
    result = est.delay(now + 1.0)
    assert result is not None
    return result


@pytest.mark.parametrize("tail", [0.0, 0.01, 0.02, 0.05, 0.06])
@pytest.mark.parametrize("jitter", [0.0, 0.25])
def test_target_delay_sits_just_above_the_fast_mode_for_any_lighter_tail(
    tail: float, jitter: float
) -> None:
    # the gap between the modes is 25 ms .. 400 ms; the delay must land at its bottom, with
    # the headroom above the fast mode's top, in every seed: it never flips into the tail
    for seed in range(20):
        delay = _bimodal_delay(HedgeConfig(target=0.08), tail, seed, jitter=jitter)
        top = 0.020 * (1 + jitter)
        assert 0.020 * 1.25 - 1e-9 <= delay <= top * 1.25 + 1e-9


def test_a_p95_delay_flips_between_modes_when_the_tail_is_five_percent() -> None:
    # why p95 is not recommended: with a 5 % tail the quantile sits on the modes' boundary
    delays = {_bimodal_delay(HedgeConfig(percentile=0.95), 0.05, seed) for seed in range(20)}
    assert min(delays) == pytest.approx(0.020)  # inside the fast mode: its jitter gets hedged
    assert max(delays) >= 0.1  # inside the gap or the tail: hedges leave late
