"""Hedging and balancing over 10 seeds per shape, in virtual time, on the real decision objects.

The acceptance matrix of the recommended configuration (policies/reference.yaml): on each
shape, in every seed, p99 at most 25 % of the unhedged p99 of the same run, extra backend
requests within the budget, every endpoint at or above its minimum share, every hedge on
another endpoint. Ratios and counts only: time here is virtual, so nothing depends on the
machine.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.loadtest.tailsim import (
    NOISY,
    SHAPES,
    EndpointShape,
    LatencyShape,
    TailResult,
    TailScenario,
    percentile,
    recommended_hedging,
    simulate,
)
from gateway.resilience.balance import BalanceConfig, BalancerKind
from gateway.resilience.hedge import HedgeConfig

SEEDS = range(10)
BUDGET = 0.1
RECOMMENDED = recommended_hedging(BUDGET)
PEAK = BalanceConfig(kind=BalancerKind.PEAK_EWMA, min_share=0.1)
# the three shapes of the acceptance, quiet and on a noisy machine
MATRIX = [
    (key, noisy) for key in ("tail5-exact", "tail5-jitter", "tail2-both") for noisy in (False, True)
]


def shape(key: str, noisy: bool) -> TailScenario:
    s = SHAPES[key]
    return dataclasses.replace(s, noise=NOISY) if noisy else s


def check_run(run: TailResult, baseline: TailResult, min_share: float) -> None:
    assert run.requests == baseline.requests  # same arrivals: the same run, hedged or not
    assert run.p(0.99) <= 0.25 * baseline.p(0.99), (run.p(0.99), baseline.p(0.99))
    assert run.extra_ratio <= BUDGET
    assert run.hedges_to_first_endpoint == 0
    assert min(run.shares()) >= min_share


@pytest.mark.parametrize(("key", "noisy"), MATRIX)
def test_recommended_hedging_cuts_the_tail_in_every_seed(key: str, noisy: bool) -> None:
    scenario = shape(key, noisy)
    for seed in SEEDS:
        baseline = simulate(scenario, None, seed)
        run = simulate(scenario, RECOMMENDED, seed)
        # unhedged p99: the same seed without hedging, and the same requests' first attempts
        assert baseline.p(0.99) >= 0.39  # the tail is in the unhedged p99 (400 ms or 1 s)
        assert run.unhedged(0.99) >= 0.39
        assert run.p(0.99) <= 0.25 * run.unhedged(0.99)
        check_run(run, baseline, min_share=0.2)
        assert run.hedges > 0 and run.hedges_won > 0


@pytest.mark.parametrize(("key", "noisy"), MATRIX)
def test_recommended_hedging_on_peak_ewma_cuts_the_tail_in_every_seed(
    key: str, noisy: bool
) -> None:
    scenario = shape(key, noisy)
    for seed in SEEDS:
        baseline = simulate(scenario, None, seed)
        run = simulate(scenario, RECOMMENDED, seed, PEAK)
        # each of the two keeps at least min_share of its fair half, less sampling noise
        check_run(run, baseline, min_share=0.1 * 0.5 * 0.8)


def test_a_fast_mode_that_is_exact_costs_no_hedges_beyond_the_tail() -> None:
    # the headroom puts the delay above the fast mode: only tail requests are hedged
    for seed in SEEDS:
        run = simulate(SHAPES["tail2-both"], RECOMMENDED, seed)
        tail_share = sum(1 for x in run.first if x > 0.1) / run.requests
        assert run.hedges / run.requests <= tail_share + 0.005


def test_the_delay_before_flipped_where_the_recommended_one_holds() -> None:
    """A 5 % tail on both endpoints, on a noisy machine: the backend's p95 of the answers
    that won (the estimate before) lets some seeds keep the tail; the adaptive delay none."""
    scenario = dataclasses.replace(SHAPES["tail5-both"], noise=NOISY)
    before = [simulate(scenario, HedgeConfig(percentile=0.95), s, legacy=True) for s in SEEDS]
    after = [simulate(scenario, RECOMMENDED, s) for s in SEEDS]
    assert max(r.p(0.99) / r.unhedged(0.99) for r in before) > 0.5
    assert max(r.p(0.99) / r.unhedged(0.99) for r in after) <= 0.25
    # and the budget was what ran out before: it spent nearly all of it
    assert max(r.extra_ratio for r in before) > 0.09 > max(r.extra_ratio for r in after)


def test_hedges_stay_within_budget_when_everything_turns_slow() -> None:
    """A third of the time a neighbour adds 100 ms to every call. The adaptive delay follows
    (its quantile moves into the slow spells), so hedges stay near the tail's share, below
    the target; a delay every request passes (1 ms) runs into the budget, never past it."""
    storm = dataclasses.replace(NOISY, busy=0.1, busy_share=0.3, spell=3.0)
    scenario = dataclasses.replace(SHAPES["tail5-jitter"], noise=storm)
    for seed in range(3):
        run = simulate(scenario, RECOMMENDED, seed)
        assert run.extra_ratio <= RECOMMENDED.target  # type: ignore[operator]
        eager = simulate(scenario, HedgeConfig(delay=0.001, budget_ratio=BUDGET), seed)
        # the budget's 3-token reserve on top of 10 % of the requests, and no more
        assert BUDGET - 0.01 <= eager.extra_ratio <= BUDGET + 3 / eager.requests


def test_a_hedge_goes_to_another_region_when_one_is_usable() -> None:
    local = LatencyShape(0.02, 0.0, 0.05, 20.0)
    scenario = TailScenario(
        "regions",
        (
            EndpointShape("us-east", local),
            EndpointShape("us-east", local),
            EndpointShape("eu-west", LatencyShape(0.03)),
        ),
        local_region="us-east",
    )
    run = simulate(scenario, RECOMMENDED, 1)
    assert run.hedges > 20
    assert run.hedges_to_other_region == run.hedges
    assert run.picks[2] == 0  # first attempts stay local while the local region is healthy
    assert run.p(0.99) <= 0.25 * run.unhedged(0.99)


def test_runs_are_exact_functions_of_their_seed() -> None:
    a = simulate(SHAPES["tail5-jitter"], RECOMMENDED, 3, PEAK)
    b = simulate(SHAPES["tail5-jitter"], RECOMMENDED, 3, PEAK)
    assert a == b
    c = simulate(SHAPES["tail5-jitter"], RECOMMENDED, 4, PEAK)
    assert a.latencies != c.latencies


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN
