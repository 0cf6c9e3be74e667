"""Retry decisions, backoff and Retry-After parsing: scripted inputs, exact answers."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.resilience.budget import TokenBudget
from gateway.resilience.outcome import RETRY_CONDITIONS, Outcome
from gateway.resilience.retry import (
    DEFAULT_RETRY_ON,
    MIN_ATTEMPT_FLOOR,
    BackoffConfig,
    RetryConfig,
    RetryDecision,
    RetryPolicy,
    RetryReason,
    backoff_ceiling,
    backoff_delay,
    parse_retry_after,
)

R = RetryReason


def decide(
    policy: RetryPolicy,
    attempts_made: int = 1,
    outcome: Outcome = Outcome.STATUS_5XX,
    *,
    idempotent: bool = True,
    remaining: float = 10.0,
    retry_after: float | None = None,
    rnd: float = 0.5,
    budget: TokenBudget | None = None,
) -> RetryDecision:
    return policy.decide(
        attempts_made,
        outcome,
        idempotent=idempotent,
        remaining=remaining,
        retry_after=retry_after,
        rnd=rnd,
        budget=budget,
    )


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_is_full_jitter_exponential_with_cap() -> None:
    cfg = BackoffConfig()  # 25 ms base, 250 ms cap
    assert [backoff_ceiling(n, cfg) for n in range(1, 7)] == [
        0.025,
        0.05,
        0.1,
        0.2,
        0.25,
        0.25,
    ]
    assert backoff_delay(1, cfg, 0.0) == 0.0
    assert backoff_delay(1, cfg, 0.5) == 0.0125
    assert backoff_delay(3, cfg, 0.5) == 0.05
    assert backoff_delay(10, cfg, 0.999) == pytest.approx(0.24975)


def test_backoff_survives_huge_retry_numbers() -> None:
    assert backoff_delay(10**6, BackoffConfig(base=1.0, max=5.0), 0.5) == 2.5


def test_backoff_retry_number_counts_from_one() -> None:
    with pytest.raises(ValueError, match="retry_number"):
        backoff_delay(0, BackoffConfig(), 0.5)


@given(n=st.integers(min_value=1, max_value=5000), rnd=st.floats(min_value=0.0, max_value=0.9999))
def test_backoff_stays_in_range(n: int, rnd: float) -> None:
    cfg = BackoffConfig()
    assert 0.0 <= backoff_delay(n, cfg, rnd) < cfg.max


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": -0.01}, "base"),
        ({"base": float("nan")}, "base"),
        ({"base": 0.5, "max": 0.25}, "max"),
        ({"max": float("inf")}, "max"),
    ],
)
def test_backoff_config_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffConfig(**kwargs)


# --- config --------------------------------------------------------------------------------


def test_defaults_follow_the_design() -> None:
    cfg = RetryConfig()
    assert cfg.attempts == 2
    assert cfg.per_try_timeout is None
    assert cfg.on == DEFAULT_RETRY_ON
    assert Outcome.STATUS_429 not in cfg.on
    assert {Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.MALFORMED} <= cfg.on
    assert {Outcome.TIMEOUT, Outcome.STATUS_5XX} <= cfg.on
    assert cfg.backoff == BackoffConfig(0.025, 0.25)
    assert cfg.non_idempotent is False
    assert cfg.effective_min_attempt_time == MIN_ATTEMPT_FLOOR
    assert RetryConfig(per_try_timeout=0.8).effective_min_attempt_time == 0.8
    assert RetryConfig(per_try_timeout=0.8, min_attempt_time=0.1).effective_min_attempt_time == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"per_try_timeout": 0.0}, "per_try_timeout"),
        ({"per_try_timeout": float("inf")}, "per_try_timeout"),
        ({"min_attempt_time": -1.0}, "min_attempt_time"),
        ({"on": {Outcome.RESET}}, "frozenset"),
        ({"on": frozenset({"5xx"})}, "Outcome"),
        ({"on": frozenset({Outcome.CLIENT_ERROR})}, "client_error"),
        ({"on": frozenset({Outcome.SUCCESS, Outcome.CANCELLED})}, "cancelled, success"),
    ],
)
def test_retry_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryConfig(**kwargs)  # type: ignore[arg-type]


# --- decide ------------------------------------------------------------------------------------


def test_retries_a_retryable_failure_with_jittered_backoff() -> None:
    policy = RetryPolicy(RetryConfig(attempts=3))
    assert decide(policy, 1, rnd=0.5) == RetryDecision(True, 0.0125, R.RETRYING)
    assert decide(policy, 2, rnd=0.5) == RetryDecision(True, 0.025, R.RETRYING)
    assert decide(policy, 3) == RetryDecision(False, 0.0, R.ATTEMPTS_EXHAUSTED)


@pytest.mark.parametrize(
    "outcome", [Outcome.SUCCESS, Outcome.CLIENT_ERROR, Outcome.CANCELLED, Outcome.STATUS_429]
)
def test_outcomes_outside_on_are_not_retried(outcome: Outcome) -> None:
    assert decide(RetryPolicy(RetryConfig()), 1, outcome).reason is R.NOT_RETRYABLE_OUTCOME


def test_429_retried_when_listed() -> None:
    policy = RetryPolicy(RetryConfig(on=RETRY_CONDITIONS["429"]))
    assert decide(policy, 1, Outcome.STATUS_429).retry
    assert decide(policy, 1, Outcome.STATUS_5XX).reason is R.NOT_RETRYABLE_OUTCOME


def test_attempts_one_never_retries() -> None:
    policy = RetryPolicy(RetryConfig(attempts=1))
    assert policy.max_retries == 0
    assert decide(policy, 1).reason is R.ATTEMPTS_EXHAUSTED


def test_attempts_made_counts_from_one() -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        decide(RetryPolicy(RetryConfig()), 0)


@pytest.mark.parametrize(
    ("outcome", "retry", "reason"),
    [
        (Outcome.CONNECT_FAILURE, True, R.RETRYING),
        (Outcome.RESET, False, R.NON_IDEMPOTENT),
        (Outcome.TIMEOUT, False, R.NON_IDEMPOTENT),
        (Outcome.STATUS_5XX, False, R.NON_IDEMPOTENT),
        (Outcome.MALFORMED, False, R.NON_IDEMPOTENT),
    ],
)
def test_non_idempotent_retried_only_on_connect_failure(
    outcome: Outcome, retry: bool, reason: RetryReason
) -> None:
    d = decide(RetryPolicy(RetryConfig()), 1, outcome, idempotent=False)
    assert (d.retry, d.reason) == (retry, reason)


def test_route_can_opt_non_idempotent_requests_in() -> None:
    policy = RetryPolicy(RetryConfig(non_idempotent=True))
    assert decide(policy, 1, Outcome.STATUS_5XX, idempotent=False).retry


def test_non_retryable_outcome_is_reported_before_non_idempotent() -> None:
    d = decide(RetryPolicy(RetryConfig()), 1, Outcome.CLIENT_ERROR, idempotent=False)
    assert d.reason is R.NOT_RETRYABLE_OUTCOME


def test_retry_after_raises_the_delay() -> None:
    policy = RetryPolicy(RetryConfig())
    assert decide(policy, retry_after=2.0, remaining=10.0) == RetryDecision(True, 2.0, R.RETRYING)
    # a Retry-After shorter than the backoff does not shorten it
    assert decide(policy, retry_after=0.001, rnd=0.8).delay == pytest.approx(0.02)


def test_retry_after_beyond_the_deadline_means_no_retry() -> None:
    policy = RetryPolicy(RetryConfig())
    assert decide(policy, retry_after=3.0, remaining=2.0).reason is R.NO_TIME_LEFT
    # exactly filling the time leaves no room for the attempt itself
    assert decide(policy, retry_after=2.0, remaining=2.0).reason is R.NO_TIME_LEFT
    assert decide(policy, retry_after=2.0, remaining=2.0 + MIN_ATTEMPT_FLOOR).retry


def test_no_retry_that_cannot_finish_its_per_try_timeout() -> None:
    policy = RetryPolicy(RetryConfig(per_try_timeout=0.8, attempts=3))
    # first attempt timed out at 0.8 s of a 2 s deadline: 1.2 s left, 25 ms max backoff
    assert decide(policy, 1, Outcome.TIMEOUT, remaining=1.2, rnd=0.999).retry
    # second timed out at 1.6 s: 0.4 s left, a whole 0.8 s try does not fit
    assert decide(policy, 2, Outcome.TIMEOUT, remaining=0.4).reason is R.NO_TIME_LEFT
    # the backoff counts too: 0.05 x 0.5 = 0.025 s wait + 0.8 s > 0.82 s
    assert decide(policy, 2, remaining=0.82, rnd=0.5).reason is R.NO_TIME_LEFT
    assert decide(policy, 2, remaining=0.83, rnd=0.5).retry


def test_min_attempt_time_overrides_per_try_timeout() -> None:
    policy = RetryPolicy(RetryConfig(per_try_timeout=0.8, min_attempt_time=0.1))
    assert decide(policy, remaining=0.4, rnd=0.0).retry
    assert decide(policy, remaining=0.09, rnd=0.0).reason is R.NO_TIME_LEFT


def test_deadline_passed_means_no_retry() -> None:
    policy = RetryPolicy(RetryConfig())
    assert decide(policy, remaining=-0.5, rnd=0.0).reason is R.NO_TIME_LEFT
    assert decide(policy, remaining=0.0, rnd=0.0).reason is R.NO_TIME_LEFT


def test_budget_is_consulted_last() -> None:
    policy = RetryPolicy(RetryConfig(attempts=3))
    budget = TokenBudget(ratio=0.0, reserve=1.0)
    # every other "no" leaves the token in place
    assert decide(policy, 1, Outcome.CLIENT_ERROR, budget=budget).reason is R.NOT_RETRYABLE_OUTCOME
    assert decide(policy, 1, idempotent=False, budget=budget).reason is R.NON_IDEMPOTENT
    assert decide(policy, 3, budget=budget).reason is R.ATTEMPTS_EXHAUSTED
    assert decide(policy, 1, remaining=0.0, budget=budget).reason is R.NO_TIME_LEFT
    assert budget.balance == 1.0
    assert decide(policy, 1, budget=budget).retry
    assert budget.balance == 0.0
    assert decide(policy, 1, budget=budget) == RetryDecision(False, 0.0, R.BUDGET_EXHAUSTED)


def test_budget_bounds_retries_during_an_outage() -> None:
    policy = RetryPolicy(RetryConfig())
    budget = TokenBudget(ratio=0.2, reserve=3.0)
    retries = 0
    for _ in range(1000):  # every request fails
        budget.deposit()
        if decide(policy, 1, budget=budget).retry:
            retries += 1
    assert retries == 203  # reserve 3 + 20 % of 1000


def test_try_timeout() -> None:
    assert RetryPolicy(RetryConfig(per_try_timeout=0.8)).try_timeout(2.0) == 0.8
    assert RetryPolicy(RetryConfig(per_try_timeout=0.8)).try_timeout(0.3) == 0.3
    assert RetryPolicy(RetryConfig()).try_timeout(1.7) == 1.7
    assert RetryPolicy(RetryConfig()).try_timeout(-1.0) == 0.0


def test_reason_values_are_metric_labels() -> None:
    assert [r.value for r in RetryReason] == [
        "retrying",
        "not_retryable_outcome",
        "non_idempotent",
        "attempts_exhausted",
        "no_time_left",
        "budget_exhausted",
    ]


# --- Retry-After -----------------------------------------------------------------------------

NOW = float(calendar.timegm((2015, 10, 21, 7, 28, 0)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-1", None),
        ("+3", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("5 seconds", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),
        ("Wed Oct 21 07:28:10 2015", 10.0),
        ("Wed, 21 Oct 2015 07:28:05 -0000", 5.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past: retry now is fine
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0
