"""Retry decisions (Envoy / gRPC A6 semantics), backoff and `Retry-After` parsing.

`RetryPolicy.decide` answers one question after a failed attempt: retry, after how
long, and why (or why not). It is pure: the caller passes the attempt count, the
outcome, the time left before the request's overall deadline, a random number and
the route's retry budget. The checks run in this order, and the first that says no
is the reason reported:

1. the outcome is in `on` (4xx, success and cancelled outcomes are never retryable);
2. a non-idempotent request is retried only after CONNECT_FAILURE (the request never
   reached the backend, so it cannot have been applied twice) unless the route opts in
   with `non_idempotent=True`;
3. fewer than `attempts` attempts were made (`attempts` counts the first one, as in A6);
4. the wait plus the shortest useful attempt fits in the time left (`min_attempt_time`;
   see `RetryConfig`): a retry that cannot finish before the deadline only adds load;
5. the budget grants a token — last, so a token is spent only on a retry that happens.

The delay is full-jitter exponential backoff (`backoff_delay`), raised to the backend's
`Retry-After` when one was given (a backend asking for 2 s is not retried after 25 ms).

The caller's contract: after a failed attempt call `decide`; when `retry` is True, wait
`delay` seconds, pick an endpoint not yet tried by this request (see balance.py), and
run the next attempt with `try_timeout(remaining)`. Count `reason.value` in metrics
either way.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

from gateway.resilience.budget import TokenBudget
from gateway.resilience.outcome import RETRY_CONDITIONS, Outcome

# Shortest attempt worth making when no per-try timeout says otherwise (seconds): below this
# the attempt cannot even complete a TCP handshake on a LAN, let alone run a model.
MIN_ATTEMPT_FLOOR = 0.001

DEFAULT_RETRY_ON: frozenset[Outcome] = (
    RETRY_CONDITIONS["connect-failure"]
    | RETRY_CONDITIONS["reset"]
    | RETRY_CONDITIONS["timeout"]
    | RETRY_CONDITIONS["5xx"]
)

_NEVER_RETRYABLE = frozenset({Outcome.SUCCESS, Outcome.CLIENT_ERROR, Outcome.CANCELLED})
_MAX_EXPONENT = 1000  # 2.0 ** 1000 is finite; beyond it the cap applies anyway


def _positive_finite(x: float) -> bool:
    return math.isfinite(x) and x > 0


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    """Exponential backoff with full jitter (AWS architecture blog; Envoy's defaults).

    base: ceiling of the first retry's wait, seconds; doubles per retry.
    max: the ceiling never grows past this, seconds.
    """

    base: float = 0.025
    max: float = 0.25

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base >= 0):
            raise ValueError(
                f"backoff base must be a finite number of seconds >= 0, got {self.base!r}"
            )
        if not (math.isfinite(self.max) and self.max >= self.base):
            raise ValueError(
                f"backoff max must be finite and >= base ({self.base!r}), got {self.max!r}"
            )


def backoff_ceiling(retry_number: int, cfg: BackoffConfig) -> float:
    """The most `backoff_delay` can return for this retry: min(max, base x 2^(n-1))."""
    if retry_number < 1:
        raise ValueError(f"retry_number counts from 1, got {retry_number!r}")
    return min(cfg.max, cfg.base * 2.0 ** min(retry_number - 1, _MAX_EXPONENT))


def backoff_delay(retry_number: int, cfg: BackoffConfig, rnd: float) -> float:
    """Seconds to wait before retry number `retry_number` (1 = the first retry).

    Full jitter: uniform in [0, min(max, base x 2^(n-1))), with `rnd` uniform in [0, 1).
    Jitter spreads the retries of many clients that failed together, so they do not
    hit the recovering backend in lockstep.
    """
    return rnd * backoff_ceiling(retry_number, cfg)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry settings of one route.

    attempts: total attempts including the first (gRPC A6 `maxAttempts`); 1 = never retry.
    per_try_timeout: seconds one attempt may take; None = until the overall deadline.
    on: outcomes that may be retried (see `outcome.RETRY_CONDITIONS`); SUCCESS,
        CLIENT_ERROR and CANCELLED are refused.
    backoff: wait between attempts.
    non_idempotent: True = the route declares its non-idempotent requests (e.g. POST
        inference calls without side effects) safe to repeat on any outcome in `on`.
    min_attempt_time: the shortest time left, after the backoff wait, for which a retry is
        still worth sending. None = `per_try_timeout` when set (a retry must be able to run
        its whole per-try timeout before the deadline), else `MIN_ATTEMPT_FLOOR` (1 ms).
        Keep `per_try_timeout` well below the route timeout, or no retry will ever fit.
    """

    attempts: int = 2
    per_try_timeout: float | None = None
    on: frozenset[Outcome] = DEFAULT_RETRY_ON
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    non_idempotent: bool = False
    min_attempt_time: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ValueError(f"retry attempts must be an integer, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(
                f"retry attempts counts the first attempt and must be >= 1, got {self.attempts!r}"
            )
        if self.per_try_timeout is not None and not _positive_finite(self.per_try_timeout):
            raise ValueError(
                "retry per_try_timeout must be a positive number of seconds or None, "
                f"got {self.per_try_timeout!r}"
            )
        if self.min_attempt_time is not None and not (
            math.isfinite(self.min_attempt_time) and self.min_attempt_time >= 0
        ):
            raise ValueError(
                "retry min_attempt_time must be a number of seconds >= 0 or None, "
                f"got {self.min_attempt_time!r}"
            )
        if not isinstance(self.on, frozenset):
            raise ValueError(f"retry on must be a frozenset of Outcome, got {self.on!r}")
        for o in self.on:
            if not isinstance(o, Outcome):
                raise ValueError(f"retry on must hold Outcome values, got {o!r}")
        bad = self.on & _NEVER_RETRYABLE
        if bad:
            names = ", ".join(sorted(o.value for o in bad))
            raise ValueError(f"retry on cannot include {names}: those outcomes are never retried")

    @property
    def effective_min_attempt_time(self) -> float:
        if self.min_attempt_time is not None:
            return self.min_attempt_time
        if self.per_try_timeout is not None:
            return self.per_try_timeout
        return MIN_ATTEMPT_FLOOR


class RetryReason(enum.Enum):
    """Why a retry was or was not made; `.value` is the metric label."""

    RETRYING = "retrying"
    NOT_RETRYABLE_OUTCOME = "not_retryable_outcome"
    NON_IDEMPOTENT = "non_idempotent"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    NO_TIME_LEFT = "no_time_left"
    BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """retry: send another attempt after `delay` seconds (0.0 when not retrying)."""

    retry: bool
    delay: float
    reason: RetryReason


_NOT_RETRYABLE = RetryDecision(False, 0.0, RetryReason.NOT_RETRYABLE_OUTCOME)
_NON_IDEMPOTENT = RetryDecision(False, 0.0, RetryReason.NON_IDEMPOTENT)
_EXHAUSTED = RetryDecision(False, 0.0, RetryReason.ATTEMPTS_EXHAUSTED)
_NO_TIME = RetryDecision(False, 0.0, RetryReason.NO_TIME_LEFT)
_NO_BUDGET = RetryDecision(False, 0.0, RetryReason.BUDGET_EXHAUSTED)


class RetryPolicy:
    """The compiled retry decision of one route; immutable, shared by all its requests."""

    __slots__ = (
        "_attempts",
        "_ceilings",
        "_min_attempt",
        "_non_idempotent",
        "_on",
        "_per_try",
        "config",
    )

    def __init__(self, config: RetryConfig) -> None:
        self.config = config
        self._attempts = config.attempts
        self._on = config.on
        self._per_try = config.per_try_timeout
        self._min_attempt = config.effective_min_attempt_time
        self._non_idempotent = config.non_idempotent
        # backoff ceilings for retry numbers 1 .. attempts-1, the only ones `decide` can need
        self._ceilings = tuple(
            backoff_ceiling(n, config.backoff) for n in range(1, config.attempts)
        )

    @property
    def max_retries(self) -> int:
        return self._attempts - 1

    def decide(
        self,
        attempts_made: int,
        outcome: Outcome,
        *,
        idempotent: bool,
        remaining: float,
        retry_after: float | None,
        rnd: float,
        budget: TokenBudget | None,
    ) -> RetryDecision:
        """Whether to retry after the attempt that just ended with `outcome`.

        attempts_made: attempts already sent by this request, including the one that failed
            (so 1 after the first attempt).
        idempotent: the caller decides from the method (GET/HEAD/PUT/DELETE/OPTIONS yes,
            POST/PATCH no); routes opt non-idempotent requests in via the config.
        remaining: seconds until the request's overall deadline (may be negative).
        retry_after: seconds the backend asked to wait (`parse_retry_after`), or None.
        rnd: uniform in [0, 1), for the backoff jitter.
        budget: the route's retry budget; a token is taken only when the answer is yes.
        """
        if attempts_made < 1:
            raise ValueError(f"attempts_made counts the failed attempt, got {attempts_made!r}")
        if outcome not in self._on:
            return _NOT_RETRYABLE
        if not idempotent and not self._non_idempotent and outcome is not Outcome.CONNECT_FAILURE:
            return _NON_IDEMPOTENT
        if attempts_made >= self._attempts:
            return _EXHAUSTED
        delay = rnd * self._ceilings[attempts_made - 1]
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        if delay + self._min_attempt > remaining:
            return _NO_TIME
        if budget is not None and not budget.try_spend():
            return _NO_BUDGET
        return RetryDecision(True, delay, RetryReason.RETRYING)

    def try_timeout(self, remaining: float) -> float:
        """Seconds the next attempt may take: the per-try timeout, cut to the time left (>= 0)."""
        if remaining <= 0:
            return 0.0
        per_try = self._per_try
        return remaining if per_try is None or per_try > remaining else per_try


_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a `Retry-After` header value, or None when absent or unusable.

    Accepts delta-seconds ("120", and "1.5" though RFC 9110 says integers) and an
    HTTP-date (IMF-fixdate and the obsolete forms `email.utils` understands), measured
    from `now_epoch` (wall-clock seconds since the epoch: `time.time()`). A date already
    past gives 0.0 (retry now is allowed). Negative numbers, non-finite values and
    garbage give None: the caller then falls back to its own backoff.
    """
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    if _DELTA_SECONDS.fullmatch(v):
        seconds = float(v)
        return seconds if math.isfinite(seconds) else None
    try:
        float(v)
    except ValueError:
        pass
    else:
        return None  # a negative, exponent or non-finite number: not delta-seconds, not a date
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown origin (RFC 5322)
        when = when.replace(tzinfo=UTC)
    try:
        delta = when.timestamp() - now_epoch
    except (OverflowError, OSError, ValueError):
        return None
    if not math.isfinite(delta):
        return None
    return delta if delta > 0 else 0.0
