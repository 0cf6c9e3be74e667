"""Load-test verdicts in SLO terms: the budget a phase spent, and the burn rate per second."""

from __future__ import annotations

import pytest

from gateway.loadtest.runner import SloBudgetSpec, budget_spent, burn_series, slo_specs
from gateway.loadtest.scenario import load_scenario_text

DAY = 86400.0
SPEC = SloBudgetSpec(error_budget=0.001, window=30 * DAY)


def test_budget_spent_is_mean_burn_times_the_phase_over_the_window() -> None:
    before = {"avail": (1000.0, 0.0)}
    after = {"avail": (1900.0, 100.0)}  # 10 % errors over the phase: 100x
    spent = budget_spent(SPEC, before, after, "avail", seconds=10.0)
    assert spent == pytest.approx(100 * 10 / (30 * DAY))
    # the same phase twice as long spends twice as much
    assert budget_spent(SPEC, before, after, "avail", seconds=20.0) == pytest.approx(2 * spent)
    clean = budget_spent(SPEC, before, {"avail": (2000.0, 0.0)}, "avail", seconds=10.0)
    assert clean == 0.0


def test_budget_spent_is_unknown_without_counts() -> None:
    assert budget_spent(SPEC, None, {"avail": (1.0, 0.0)}, "avail", 1.0) is None
    assert budget_spent(SPEC, {"avail": (1.0, 0.0)}, {"avail": (1.0, 0.0)}, "avail", 1.0) is None
    assert budget_spent(SPEC, {}, {"other": (5.0, 0.0)}, "avail", 1.0) is None


def test_burn_series_per_second() -> None:
    samples = {
        0.0: {"avail": (0.0, 0.0)},
        1.0: {"avail": (100.0, 0.0)},
        2.0: {"avail": (190.0, 10.0)},
        3.0: None,
    }
    assert burn_series(SPEC, samples, "avail", 3) == [0.0, pytest.approx(100.0), None]


def test_specs_come_from_the_policy() -> None:
    text = """\
version: 1
backends: {a: {endpoints: [{url: "http://127.0.0.1:1"}]}}
routes: [{name: r, match: {path_prefix: /}, split: [{backend: a, weight: 100}]}]
slos:
  avail: {routes: [r], window: 7d, availability: {objective: 99%}}
  fast: {routes: [r], latency: {threshold: 100ms, objective: 99.9%}}
"""
    specs = slo_specs(text, "p.yaml")
    assert specs["avail"] == SloBudgetSpec(pytest.approx(0.01), 7 * DAY)  # type: ignore[arg-type]
    assert specs["fast"].window == 30 * DAY
    assert specs["fast"].error_budget == pytest.approx(0.001)


def test_a_phase_asserts_a_share_of_an_slo_budget() -> None:
    text = """\
name: s
policy: p.yaml
sims: [{name: a}]
traffic: {duration: 5s, rate: 10/s, requests: [{path: /x}]}
phases:
  - {name: p, from: 0s, to: 5s, slo: {error_budget: {avail: "<= 0.5%"}}}
"""
    scenario = load_scenario_text(text, "s.yaml")
    bound = scenario.phases[0].slo.error_budget["avail"]
    assert bound.holds(0.004) and not bound.holds(0.006)
