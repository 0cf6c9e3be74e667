"""Compiling the tail keys: the balancer of a backend, adaptive hedging of a route."""

from __future__ import annotations

import pytest

from gateway.app import compile_text
from gateway.errors import PolicyError
from gateway.policy.load import load_policy_text
from gateway.resilience.balance import UNMEASURED_PENALTY, BalancerKind
from gateway.resilience.outcome import Outcome

POLICY = """
version: 1
backends:
  a:
    endpoints: [{{url: "http://10.0.0.1:8000"}}, {{url: "http://10.0.0.2:8000"}}]
    {balancer}
  b:
    endpoints: [{{url: "http://10.0.1.1:8000"}}]
routes:
  - name: r
    match: {{path_prefix: /}}
    split: [{{backend: a, weight: 100}}]
    {hedging}
"""


def snapshot(balancer: str = "", hedging: str = "", **kw: object):  # type: ignore[no-untyped-def]
    return compile_text(POLICY.format(balancer=balancer, hedging=hedging), "p.yaml", **kw)  # type: ignore[arg-type]


def test_the_default_balancer_is_p2c_on_outstanding_requests() -> None:
    backend = snapshot().backends["a"]
    assert backend.balancer.balance.kind is BalancerKind.P2C
    backend.states[1].outstanding = 3
    assert backend.loads(0.0) == [0, 3]


def test_peak_ewma_weighs_latency_fed_by_every_attempt_report() -> None:
    backend = snapshot("balancer: {kind: peak_ewma, min_share: 20%, decay: 5s}").backends["a"]
    cfg = backend.balancer.balance
    assert (cfg.kind, cfg.min_share, cfg.decay) == (BalancerKind.PEAK_EWMA, 0.2, 5.0)
    assert backend.states[0].ewma.decay == 5.0
    backend.states[0].outstanding = 1
    assert backend.loads(0.0) == [UNMEASURED_PENALTY, 0.0]  # nothing measured yet
    backend.report(0, Outcome.SUCCESS, 0.02, 1.0)
    backend.report(1, Outcome.SUCCESS, 0.05, 1.0)
    assert backend.loads(1.0) == [pytest.approx(0.04), pytest.approx(0.05)]
    # a fast failure does not make an endpoint cheap; a slow one, or a cancelled attempt
    # that had run long, makes it dear at once
    backend.report(1, Outcome.STATUS_5XX, 0.001, 1.0)
    assert backend.states[1].ewma.value(1.0) == pytest.approx(0.05)
    backend.report(0, Outcome.CANCELLED, 0.3, 1.0)
    assert backend.states[0].ewma.value(1.0) == pytest.approx(0.3)
    backend.report(1, Outcome.TIMEOUT, 0.5, 1.0)
    assert backend.states[1].ewma.value(1.0) == pytest.approx(0.5)


def test_latency_estimates_survive_a_reload_unless_the_decay_changes() -> None:
    first = snapshot("balancer: {kind: peak_ewma}")
    first.backends["a"].report(0, Outcome.SUCCESS, 0.02, 1.0)
    kept = snapshot("balancer: {kind: peak_ewma, min_share: 5%}", previous=first)
    assert kept.backends["a"].states[0].ewma.value(1.0) == pytest.approx(0.02)
    changed = snapshot("balancer: {kind: peak_ewma, decay: 3s}", previous=kept)
    assert not changed.backends["a"].states[0].ewma.observed


def test_adaptive_hedging_targets_eighty_percent_of_the_budget_by_default() -> None:
    route = snapshot(hedging="hedging: {delay: adaptive, budget: 10%}").routes[0]
    assert route.hedge is not None
    cfg = route.hedge.config
    assert cfg.target == pytest.approx(0.08)
    assert cfg.headroom == 0.25
    assert (cfg.delay, cfg.percentile) == (None, None)
    assert set(route.hedge_delays) == {"a", "b"}  # fallback backends run attempts too
    explicit = snapshot(hedging="hedging: {delay: adaptive, target: 5%, headroom: 10%}")
    cfg = explicit.routes[0].hedge.config  # type: ignore[union-attr]
    assert (cfg.target, cfg.headroom) == (0.05, pytest.approx(0.1))
    fixed = snapshot(hedging="hedging: {delay: 20ms}").routes[0]
    assert fixed.hedge_delays == {}


def test_a_reload_keeps_what_an_unchanged_adaptive_delay_learned() -> None:
    hedging = "hedging: {delay: adaptive}"
    first = snapshot(hedging=hedging)
    estimator = first.routes[0].hedge_delays["a"]
    for k in range(20):
        estimator.observe(k * 0.01, 0.02)
    again = snapshot(hedging=hedging, previous=first)
    assert again.routes[0].hedge_delays["a"] is estimator
    assert again.routes[0].hedge_delays["a"].delay(0.5) == pytest.approx(0.025)
    changed = snapshot(hedging="hedging: {delay: adaptive, headroom: 50%}", previous=again)
    assert changed.routes[0].hedge_delays["a"] is not estimator


@pytest.mark.parametrize(
    ("hedging", "message"),
    [
        ("hedging: {delay: 20ms, target: 5%}", "only an adaptive delay"),
        ("hedging: {delay: adaptive, target: 20%, budget: 10%}", "must not exceed the budget"),
        ("hedging: {delay: adaptive, budget: 0%}", "must be above 0%"),
    ],
)
def test_bad_adaptive_hedging_is_refused_with_its_line(hedging: str, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy_text(POLICY.format(balancer="", hedging=hedging), "p.yaml")
    text = str(e.value)
    assert message in text and text.startswith("p.yaml:13:") and "routes[0].hedging." in text


def test_an_unknown_balancer_is_refused_with_its_line() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy_text(POLICY.format(balancer="balancer: {kind: ewma}", hedging=""), "p.yaml")
    assert "p.yaml:6:" in str(e.value) and "backends.a.balancer.kind" in str(e.value)
