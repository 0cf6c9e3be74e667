"""Canary analysis: scripted intervals with explicit `now`, decisions checked one by one."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import FakeClock
from gateway.errors import ClientError
from gateway.resilience.canary import (
    CanaryAction,
    CanaryAnalysis,
    CanaryConfig,
    CanaryDecision,
    CanaryPhase,
    CanarySide,
    LatencyHistogram,
    Verdict,
)

BASE, CAN = CanarySide.BASELINE, CanarySide.CANARY
PROGRESSING, PAUSED = CanaryPhase.PROGRESSING, CanaryPhase.PAUSED
PROMOTED, ROLLED_BACK = CanaryPhase.PROMOTED, CanaryPhase.ROLLED_BACK
T0 = 1000.0
INTERVAL = 60.0


def config(**overrides: Any) -> CanaryConfig:
    settings_: dict[str, Any] = {
        "steps": (5, 25, 50, 100),
        "interval": INTERVAL,
        "max_error_rate_increase": 0.01,
        "max_p99_ratio": 1.25,
        "min_samples": 50,
        "max_failed_checks": 2,
    }
    settings_.update(overrides)
    return CanaryConfig(**settings_)


def feed(
    a: CanaryAnalysis,
    side: CanarySide,
    requests: int,
    errors: int,
    latency: float,
    now: float,
) -> None:
    """`requests` requests of one side, the first `errors` of them failed, all of `latency`."""
    for i in range(requests):
        a.record(side, i < errors, latency, now)


def interval(
    a: CanaryAnalysis,
    clock: FakeClock,
    *,
    canary: tuple[int, int, float] = (100, 0, 0.1),
    baseline: tuple[int, int, float] = (100, 0, 0.1),
) -> CanaryDecision:
    """Traffic (requests, errors, latency) for both sides, then the check at the interval end."""
    feed(a, CAN, *canary, clock.now() + 1)
    feed(a, BASE, *baseline, clock.now() + 1)
    clock.advance(INTERVAL - 1)
    assert not a.due(clock.now())
    clock.advance(1)
    assert a.due(clock.now())
    return a.evaluate(clock.now())


def start(cfg: CanaryConfig | None = None) -> tuple[CanaryAnalysis, FakeClock]:
    clock = FakeClock(T0)
    return CanaryAnalysis(cfg or config(), clock.now()), clock


# --- progress ------------------------------------------------------------------------------


def test_good_canary_is_promoted_through_every_step() -> None:
    a, clock = start()
    assert (a.phase, a.weight) == (PROGRESSING, 5.0)
    seen = [interval(a, clock) for _ in range(3)]
    assert [(d.verdict, d.action) for d in seen] == [
        (Verdict.PASS, CanaryAction.PROMOTE_STEP),
        (Verdict.PASS, CanaryAction.PROMOTE_STEP),
        (Verdict.PASS, CanaryAction.PROMOTED),
    ]
    assert [(d.weight_before, d.weight_after) for d in seen] == [(5, 25), (25, 50), (50, 100)]
    assert [d.phase for d in seen] == [PROGRESSING, PROGRESSING, PROMOTED]
    assert [d.at for d in seen] == [T0 + 60, T0 + 120, T0 + 180]
    assert (a.phase, a.weight) == (PROMOTED, 100.0)
    assert "25% -> 50%" in seen[1].reason
    assert seen[2].reason.startswith("passed: canary error rate 0.0% vs baseline 0.0%")


def test_passing_the_last_step_below_100_promotes_to_full_weight() -> None:
    a, clock = start(config(steps=(10, 50)))
    assert interval(a, clock).weight_after == 50
    d = interval(a, clock)
    assert (d.action, d.phase, d.weight_after, a.weight) == (
        CanaryAction.PROMOTED,
        PROMOTED,
        100.0,
        100.0,
    )


def test_gates_judge_only_the_interval_that_just_ended() -> None:
    a, clock = start(config(max_failed_checks=3))
    # a terrible first interval fails...
    assert interval(a, clock, canary=(100, 50, 0.1)).verdict is Verdict.FAIL
    # ...but does not weigh on the next one, which is judged on its own counts
    d = interval(a, clock)
    assert d.verdict is Verdict.PASS
    assert d.canary is not None and (d.canary.requests, d.canary.errors) == (100, 0)


def test_due_only_when_the_interval_has_ended_and_restarts_at_evaluate() -> None:
    a, _ = start()
    assert not a.due(T0 + 59.999)
    assert a.due(T0 + 60) and a.next_check_at == T0 + 60
    a.evaluate(T0 + 75)  # a late check starts the next interval from when it ran
    assert a.interval_start == T0 + 75
    assert not a.due(T0 + 134.9) and a.due(T0 + 135)


def test_samples_recorded_late_in_an_interval_count_in_it() -> None:
    a, _ = start()
    feed(a, CAN, 100, 0, 0.1, T0 + 59.9)
    feed(a, BASE, 100, 0, 0.1, T0 + 59.9)
    d = a.evaluate(T0 + 60)
    assert d.verdict is Verdict.PASS
    assert d.baseline is not None and d.baseline.requests == 100


# --- failure and rollback ------------------------------------------------------------------


def test_bad_canary_is_rolled_back_after_max_failed_checks() -> None:
    a, clock = start()
    first = interval(a, clock, canary=(100, 10, 0.1), baseline=(1000, 0, 0.1))
    assert (first.verdict, first.action, first.weight_after, first.phase) == (
        Verdict.FAIL,
        CanaryAction.HOLD,
        5.0,
        PROGRESSING,
    )
    assert "canary error rate 10.0% vs baseline 0.0% (+10.0% > +1.0%)" in first.reason
    assert first.reason.startswith("failed check 1 of 2 in a row")
    assert a.failed_checks == 1
    second = interval(a, clock, canary=(100, 10, 0.1), baseline=(1000, 0, 0.1))
    assert (second.verdict, second.action, second.weight_before, second.weight_after) == (
        Verdict.FAIL,
        CanaryAction.ROLLBACK,
        5.0,
        0.0,
    )
    assert (a.phase, a.weight) == (ROLLED_BACK, 0.0)
    assert "rolled back: 5% -> 0%" in second.reason


def test_error_gate_is_relative_to_the_baseline_of_the_same_interval() -> None:
    a, clock = start()
    # both sides suffer an outage together: the canary is no worse, so it passes
    d = interval(a, clock, canary=(100, 30, 0.1), baseline=(100, 30, 0.1))
    assert d.verdict is Verdict.PASS
    assert "(+0.0% <= +1.0%)" in d.reason


def test_error_increase_equal_to_the_gate_passes_and_just_above_fails() -> None:
    a, clock = start(config(max_failed_checks=5))
    assert interval(a, clock, canary=(100, 3, 0.1), baseline=(100, 2, 0.1)).verdict is Verdict.PASS
    d = interval(a, clock, canary=(100, 4, 0.1), baseline=(100, 2, 0.1))
    assert d.verdict is Verdict.FAIL
    assert "(+2.0% > +1.0%)" in d.reason


def test_zero_error_baseline_still_fails_a_canary_above_the_gate() -> None:
    a, clock = start(config(max_error_rate_increase=0.0))
    d = interval(a, clock, canary=(200, 1, 0.1), baseline=(200, 0, 0.1))
    assert d.verdict is Verdict.FAIL
    assert "canary error rate 0.50% vs baseline 0.0% (+0.50% > +0.0%)" in d.reason


def test_slow_canary_fails_on_p99() -> None:
    a, clock = start()
    d = interval(a, clock, canary=(100, 0, 0.3), baseline=(100, 0, 0.2))
    assert d.verdict is Verdict.FAIL and d.action is CanaryAction.HOLD
    assert d.canary is not None and d.baseline is not None
    assert d.canary.p99 == pytest.approx(0.3) and d.baseline.p99 == pytest.approx(0.2)
    assert "canary p99 300.0 ms vs baseline 200.0 ms (x1.50 > x1.25)" in d.reason
    assert "(+0.0% <= +1.0%)" in d.reason  # the error gate held; only latency failed


def test_p99_looks_at_the_tail_not_the_median() -> None:
    a, _ = start()
    # 98 % of canary requests are fast; the slowest 2 % are 4x slower than the baseline
    a.record(CAN, False, 0.0, T0)  # keep the histogram's floor honest
    feed(a, CAN, 97, 0, 0.05, T0 + 1)
    feed(a, CAN, 2, 0, 0.4, T0 + 1)
    feed(a, BASE, 100, 0, 0.1, T0 + 1)
    d = a.evaluate(T0 + 60)
    assert d.verdict is Verdict.FAIL
    assert d.canary is not None and d.canary.p99 == pytest.approx(0.4)


def test_slightly_slower_canary_within_the_ratio_passes() -> None:
    a, clock = start()
    d = interval(a, clock, canary=(100, 0, 0.12), baseline=(100, 0, 0.1))
    assert d.verdict is Verdict.PASS
    assert "(x1.20 <= x1.25)" in d.reason


def test_near_zero_baseline_p99_is_floored_instead_of_divided_by() -> None:
    a, clock = start()
    fast = interval(a, clock, canary=(100, 0, 0.0005), baseline=(100, 0, 0.0))
    assert fast.verdict is Verdict.PASS  # both under the 1 ms floor: equal
    assert "canary p99 0.5 ms vs baseline 0.0 ms (x1.00 <= x1.25)" in fast.reason
    slow = interval(a, clock, canary=(100, 0, 0.005), baseline=(100, 0, 0.0))
    assert slow.verdict is Verdict.FAIL
    assert "(x5.00 > x1.25)" in slow.reason


def test_a_pass_resets_the_consecutive_failure_count() -> None:
    a, clock = start(config(steps=(1, 2, 3, 4, 5)))
    bad = (100, 20, 0.1)
    assert interval(a, clock, canary=bad).action is CanaryAction.HOLD
    assert interval(a, clock).action is CanaryAction.PROMOTE_STEP
    assert a.failed_checks == 0
    assert interval(a, clock, canary=bad).action is CanaryAction.HOLD  # 1 in a row again
    assert a.phase is PROGRESSING
    assert interval(a, clock, canary=bad).action is CanaryAction.ROLLBACK


def test_max_failed_checks_of_one_rolls_back_on_the_first_failure() -> None:
    a, clock = start(config(max_failed_checks=1))
    d = interval(a, clock, canary=(100, 0, 1.0))
    assert (d.action, d.weight_after) == (CanaryAction.ROLLBACK, 0.0)


# --- too few samples -----------------------------------------------------------------------


def test_too_few_samples_waits_forever_without_promoting() -> None:
    a, clock = start()
    for _ in range(20):
        d = interval(a, clock, canary=(49, 0, 0.1), baseline=(5000, 0, 0.1))
        assert (d.verdict, d.action, d.weight_before, d.weight_after) == (
            Verdict.WAIT,
            CanaryAction.WAIT,
            5.0,
            5.0,
        )
    assert (a.phase, a.weight, a.failed_checks) == (PROGRESSING, 5.0, 0)
    assert d.reason.startswith(
        "too few samples to judge: canary 49, baseline 5000 requests (need 50 each)"
    )


def test_too_few_baseline_samples_wait_even_for_a_failing_canary() -> None:
    a, clock = start()
    d = interval(a, clock, canary=(100, 100, 5.0), baseline=(49, 0, 0.1))
    assert d.verdict is Verdict.WAIT and a.failed_checks == 0


def test_samples_do_not_carry_over_between_intervals() -> None:
    a, clock = start()
    assert interval(a, clock, canary=(30, 0, 0.1), baseline=(30, 0, 0.1)).verdict is Verdict.WAIT
    # 30 + 30 would be enough, but each interval is judged alone
    assert interval(a, clock, canary=(30, 0, 0.1), baseline=(30, 0, 0.1)).verdict is Verdict.WAIT


def test_wait_neither_counts_as_a_failure_nor_forgives_one() -> None:
    a, clock = start()
    bad = (100, 20, 0.1)
    assert interval(a, clock, canary=bad).action is CanaryAction.HOLD
    assert interval(a, clock, canary=(10, 0, 0.1)).action is CanaryAction.WAIT
    assert a.failed_checks == 1
    assert interval(a, clock, canary=bad).action is CanaryAction.ROLLBACK


# --- terminal phases -----------------------------------------------------------------------


def test_terminal_phases_ignore_records_are_never_due_and_refuse_actions() -> None:
    for cfg, bad in ((config(steps=(50,)), False), (config(max_failed_checks=1), True)):
        a, clock = start(cfg)
        interval(a, clock, canary=(100, 50 if bad else 0, 0.1))
        assert a.phase is (ROLLED_BACK if bad else PROMOTED)
        feed(a, CAN, 100, 0, 0.1, clock.now())
        assert a.interval_stats()[0].requests == 0
        assert not a.due(clock.now() + 10 * INTERVAL)
        assert a.next_check_at is None
        for act in (a.evaluate, a.pause, a.resume, a.promote):
            with pytest.raises(ClientError, match=r"cannot .* canary analysis that is"):
                act(clock.now())
        with pytest.raises(ClientError):
            a.rollback(clock.now(), "too late")


# --- operators -----------------------------------------------------------------------------


def test_pause_stops_evaluation_and_resume_starts_a_fresh_interval() -> None:
    a, clock = start()
    assert interval(a, clock).weight_after == 25
    feed(a, CAN, 100, 0, 0.1, clock.now())  # gathered before the pause: dropped with it
    p = a.pause(clock.advance(10))
    assert (p.verdict, p.action, p.phase, p.weight_before, p.weight_after) == (
        None,
        CanaryAction.PAUSE,
        PAUSED,
        25.0,
        25.0,
    )
    assert a.weight == 25.0
    # a bad canary while paused is neither recorded nor judged
    feed(a, CAN, 1000, 900, 9.0, clock.now())
    feed(a, BASE, 1000, 0, 0.1, clock.now())
    assert not a.due(clock.advance(10 * INTERVAL))
    assert a.interval_stats()[0].requests == 0
    r = a.resume(clock.now())
    assert (r.action, r.phase, a.interval_start) == (CanaryAction.RESUME, PROGRESSING, clock.now())
    assert not a.due(clock.now())
    d = interval(a, clock)
    assert (d.verdict, d.weight_before, d.weight_after) == (Verdict.PASS, 25.0, 50.0)
    assert d.canary is not None and d.canary.requests == 100


def test_pause_twice_and_resume_while_running_are_refused() -> None:
    a, _ = start()
    with pytest.raises(ClientError, match="cannot resume a canary analysis that is progressing"):
        a.resume(T0)
    a.pause(T0)
    with pytest.raises(ClientError, match="paused"):
        a.pause(T0)
    with pytest.raises(ClientError, match="cannot evaluate"):
        a.evaluate(T0 + INTERVAL)


def test_operator_promote_gives_the_canary_all_traffic() -> None:
    a, clock = start()
    d = a.promote(clock.advance(5))
    assert (d.verdict, d.action, d.weight_before, d.weight_after, d.phase) == (
        None,
        CanaryAction.OPERATOR_PROMOTE,
        5.0,
        100.0,
        PROMOTED,
    )
    assert d.reason == "promoted by operator: 5% -> 100%"
    assert (d.canary, d.baseline) == (None, None)
    assert not a.due(clock.advance(INTERVAL))


def test_operator_rollback_from_pause_keeps_the_operators_reason() -> None:
    a, clock = start()
    interval(a, clock)
    a.pause(clock.now())
    d = a.rollback(clock.advance(1), "customer complaints")
    assert (d.action, d.weight_before, d.weight_after, a.phase) == (
        CanaryAction.OPERATOR_ROLLBACK,
        25.0,
        0.0,
        ROLLED_BACK,
    )
    assert d.reason == "rolled back by operator: 25% -> 0%: customer complaints"


def test_decision_to_dict_is_json_ready() -> None:
    a, clock = start()
    d = interval(a, clock, canary=(100, 10, 0.2))
    as_json = json.loads(json.dumps(d.to_dict()))
    assert as_json["action"] == "hold" and as_json["verdict"] == "fail"
    assert as_json["canary"] == {
        "requests": 100, "errors": 10, "error_rate": 0.1, "p99": 0.2, "outputs": 0,
    }  # fmt: skip
    assert as_json["output_drift"] is None
    assert as_json["phase"] == "progressing" and as_json["weight_after"] == 5.0


# --- sharing -------------------------------------------------------------------------------

SCRIPT: list[tuple[tuple[int, int, float], tuple[int, int, float]]] = [
    ((100, 0, 0.1), (100, 0, 0.1)),  # pass
    ((10, 0, 0.1), (100, 0, 0.1)),  # wait
    ((100, 0, 0.5), (100, 0, 0.1)),  # fail (latency)
    ((100, 0, 0.1), (100, 0, 0.1)),  # pass
    ((100, 9, 0.1), (100, 0, 0.1)),  # fail (errors)
    ((100, 9, 0.1), (100, 0, 0.1)),  # fail → rollback
]


def run(a: CanaryAnalysis, clock: FakeClock, script: list[Any]) -> list[CanaryDecision]:
    out = []
    for canary, baseline in script:
        out.append(interval(a, clock, canary=canary, baseline=baseline))
    return out


@pytest.mark.parametrize("split_at", range(len(SCRIPT)))
def test_export_restore_round_trip_yields_identical_future_decisions(split_at: int) -> None:
    cfg = config(steps=(5, 10, 25, 50, 100))
    original, clock = start(cfg)
    run(original, clock, SCRIPT[:split_at])
    state = json.loads(json.dumps(original.export()))
    copy = CanaryAnalysis.restore(cfg, state)
    assert copy.export() == original.export()
    assert (copy.phase, copy.weight, copy.failed_checks) == (
        original.phase,
        original.weight,
        original.failed_checks,
    )
    twin = FakeClock(clock.now())
    assert run(copy, twin, SCRIPT[split_at:]) == run(original, clock, SCRIPT[split_at:])


def test_restore_keeps_the_interval_clock_and_the_failure_streak() -> None:
    a, clock = start()
    interval(a, clock, canary=(100, 50, 0.1))
    state = a.export()
    assert state == {
        "phase": "progressing",
        "step": 0,
        "failed_checks": 1,
        "interval_start": T0 + INTERVAL,
    }
    b = CanaryAnalysis.restore(a.config, state)
    assert not b.due(T0 + 2 * INTERVAL - 0.1) and b.due(T0 + 2 * INTERVAL)
    feed(b, CAN, 100, 50, 0.1, T0 + 61)
    feed(b, BASE, 100, 0, 0.1, T0 + 61)
    assert b.evaluate(T0 + 2 * INTERVAL).action is CanaryAction.ROLLBACK


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"step": 0, "failed_checks": 0, "interval_start": 0.0}, "phase"),
        ({"phase": "done", "step": 0, "failed_checks": 0, "interval_start": 0.0}, "phase"),
        ({"phase": "paused", "step": "0", "failed_checks": 0, "interval_start": 0.0}, "step"),
        ({"phase": "paused", "step": 9, "failed_checks": 0, "interval_start": 0.0}, "step"),
        ({"phase": "paused", "step": 3, "failed_checks": 0, "interval_start": 0.0}, "100 %"),
        ({"phase": "paused", "step": 0, "failed_checks": 2, "interval_start": 0.0}, "failed"),
        ({"phase": "paused", "step": 0, "failed_checks": True, "interval_start": 0.0}, "failed"),
        ({"phase": "paused", "step": 0, "failed_checks": 0}, "interval_start"),
        ({"phase": "paused", "step": 0, "failed_checks": 0, "interval_start": "x"}, "interval"),
    ],
)
def test_restore_rejects_broken_state(state: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanaryAnalysis.restore(config(), state)


def test_restore_of_a_promoted_analysis_at_the_100_step_is_allowed() -> None:
    state = {"phase": "promoted", "step": 3, "failed_checks": 0, "interval_start": 5.0}
    a = CanaryAnalysis.restore(config(), state)
    assert (a.phase, a.weight) == (PROMOTED, 100.0)


# --- config validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": ()}, "at least one weight"),
        ({"steps": (0, 50)}, r"percentages in \(0, 100\]"),
        ({"steps": (5, 120)}, r"percentages in \(0, 100\]"),
        ({"steps": (5, float("nan"))}, r"percentages in \(0, 100\]"),
        ({"steps": (25, 5)}, "strictly ascending"),
        ({"steps": (5, 5, 50)}, "strictly ascending"),
        ({"steps": (100,)}, "must start below 100"),
        ({"interval": 0}, "interval must be a positive"),
        ({"interval": float("inf")}, "interval must be a positive"),
        ({"max_error_rate_increase": -0.01}, "max_error_rate_increase"),
        ({"max_error_rate_increase": 1.0}, "max_error_rate_increase"),
        ({"max_p99_ratio": 0.9}, "max_p99_ratio"),
        ({"max_p99_ratio": float("nan")}, "max_p99_ratio"),
        ({"min_samples": 0}, "min_samples must be at least 1"),
        ({"max_failed_checks": 0}, "max_failed_checks must be at least 1"),
        ({"p99_floor": 0.0}, "p99_floor"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_config_normalises_steps_to_floats() -> None:
    cfg = config(steps=[5, 50])
    assert cfg.steps == (5.0, 50.0) and isinstance(cfg.steps, tuple)


def test_constructor_rejects_a_step_outside_the_steps() -> None:
    with pytest.raises(ValueError, match="index the 4 configured steps"):
        CanaryAnalysis(config(), T0, step=4)


# --- latency histogram ---------------------------------------------------------------------


def test_histogram_is_empty_then_exact_for_a_single_value() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.99) is None
    h.record(0.123)
    assert h.quantile(0.99) == pytest.approx(0.123)
    assert h.quantile(0.0) == pytest.approx(0.123)


def test_histogram_clamps_extremes_and_rejects_bad_quantiles() -> None:
    h = LatencyHistogram()
    h.record(-1.0)
    h.record(1e9)
    assert h.quantile(0.0) == pytest.approx(1e-4)  # the first bucket holds all of 0..0.1 ms
    assert h.quantile(1.0) == 1e9
    with pytest.raises(ValueError, match="quantile"):
        h.quantile(99)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-4, max_value=100.0), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.9, 0.99, 1.0]),
)
def test_histogram_quantile_is_within_one_bucket_of_the_exact_one(
    values: list[float], q: float
) -> None:
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    exact = ordered[max(1, math.ceil(q * len(values))) - 1]
    got = h.quantile(q)
    assert got is not None
    assert exact * (1 - 1e-9) <= got <= exact * 2 ** (1 / 16) * (1 + 1e-9)


# --- the output gate -----------------------------------------------------------------------


def outputs(a: CanaryAnalysis, side: CanarySide, counts: dict[str, int], now: float) -> None:
    for label, n in counts.items():
        a.record_output(side, [label] * n, now)


def test_a_canary_that_answers_differently_is_rolled_back_with_a_perfect_error_rate() -> None:
    clock = FakeClock(T0)
    a = CanaryAnalysis(config(max_output_drift=0.1, min_output_samples=40), clock.now())
    decisions = []
    for _ in range(2):
        feed(a, CAN, 100, 0, 0.01, clock.now())
        feed(a, BASE, 100, 0, 0.01, clock.now())
        outputs(a, BASE, {"cat": 50, "dog": 50}, clock.now())
        outputs(a, CAN, {"cat": 90, "dog": 10}, clock.now())
        decisions.append(a.evaluate(clock.advance(INTERVAL)))
    assert [d.action for d in decisions] == [CanaryAction.HOLD, CanaryAction.ROLLBACK]
    # JS distance of (0.9, 0.1) against (0.5, 0.5), computed by hand in bits
    p, q = (0.9, 0.1), (0.5, 0.5)
    m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
    jsd = sum(x * math.log2(x / z) + y * math.log2(y / z) for x, y, z in zip(p, q, m, strict=True))
    assert decisions[0].output_drift == pytest.approx(math.sqrt(jsd / 2))
    assert "output drift" in decisions[0].reason and "0% vs baseline 0.0%" in decisions[0].reason
    assert a.phase is ROLLED_BACK and a.weight == 0.0
    assert decisions[0].canary is not None and decisions[0].canary.outputs == 100


def test_the_same_outputs_pass_the_output_gate() -> None:
    clock = FakeClock(T0)
    a = CanaryAnalysis(config(max_output_drift=0.1, min_output_samples=40), clock.now())
    feed(a, CAN, 100, 0, 0.01, clock.now())
    feed(a, BASE, 100, 0, 0.01, clock.now())
    outputs(a, BASE, {"cat": 50, "dog": 50}, clock.now())
    outputs(a, CAN, {"cat": 48, "dog": 52}, clock.now())
    d = a.evaluate(clock.advance(INTERVAL))
    assert d.action is CanaryAction.PROMOTE_STEP and d.output_drift is not None


def test_too_few_outputs_wait_rather_than_promote_but_other_failures_still_fail() -> None:
    clock = FakeClock(T0)
    a = CanaryAnalysis(config(max_output_drift=0.1, min_output_samples=40), clock.now())
    feed(a, CAN, 100, 0, 0.01, clock.now())
    feed(a, BASE, 100, 0, 0.01, clock.now())
    outputs(a, CAN, {"cat": 39}, clock.now())
    outputs(a, BASE, {"cat": 100}, clock.now())
    d = a.evaluate(clock.advance(INTERVAL))
    assert (d.verdict, d.action, d.output_drift) == (Verdict.WAIT, CanaryAction.WAIT, None)
    assert "too few outputs" in d.reason
    feed(a, CAN, 100, 20, 0.01, clock.now())
    feed(a, BASE, 100, 0, 0.01, clock.now())
    d = a.evaluate(clock.advance(INTERVAL))
    assert (d.verdict, d.action) == (Verdict.FAIL, CanaryAction.HOLD)


def test_outputs_are_ignored_unless_progressing_and_labels_are_bounded() -> None:
    clock = FakeClock(T0)
    a = CanaryAnalysis(config(max_output_drift=0.1, min_output_samples=1), clock.now())
    a.pause(clock.now())
    outputs(a, CAN, {"cat": 5}, clock.now())
    a.resume(clock.now())
    assert a.interval_stats()[0].outputs == 0
    a.record_output(CAN, [str(i) for i in range(500)], clock.now())
    assert a.interval_stats()[0].outputs == 500
    with pytest.raises(ValueError):
        config(max_output_drift=0.0)
    with pytest.raises(ValueError):
        config(min_output_samples=0)
