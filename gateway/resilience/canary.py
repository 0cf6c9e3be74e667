"""Automated canary analysis for one route, with Flagger / Argo Rollouts / Kayenta semantics.

The canary backend receives a stepped share of the route's traffic (`steps`, in percent).
Every `interval` the canary is judged against the baseline measured over THE SAME interval,
never against history, so a load spike or a slow dependency that hurts both sides does not
fail the canary:

* WAIT: either side served fewer than `min_samples` requests. Nothing changes: the weight
  stays, the check counts neither as a pass nor as a failure (a failure streak survives a
  quiet interval; it is not forgiven by one either). A canary with too little traffic is
  therefore never promoted.
* PASS: both gates hold. The consecutive-failure count resets and the weight moves to the
  next step. Moving to 100 %, or passing at the last step, is promotion (PROMOTED, weight
  100): a canary that takes all the traffic has no baseline left to be compared with.
* FAIL: a gate broke. The weight holds until `max_failed_checks` checks in a row have
  failed; then the canary is ROLLED_BACK to weight 0.

The gates: the canary's error rate may exceed the baseline's by at most
`max_error_rate_increase` (a fraction), and the canary's p99 may be at most
`max_p99_ratio` times the baseline's. With `max_output_drift`, a third gate judges what
the canary answers: the Jensen-Shannon distance between the canary's and the baseline's
output labels (the predicted class, or a finish reason) over the same interval may be at
most that. Outputs are reported apart (`record_output`, from sampled answers); while
either side has fewer than `min_output_samples` labels the output gate cannot pass, so a
check whose other gates pass WAITs rather than promote, and one whose other gates fail
still fails. Both p99s are first raised to `p99_floor`, so a
baseline answering in ~0 ms is never divided by. The p99 of each side comes from a
fixed-size log-bucketed histogram (`LatencyHistogram`), so `record` is O(1) per request
and the memory is fixed whatever the traffic.

PROMOTED and ROLLED_BACK are terminal: `record` ignores everything, `due` is False, and
every action but `export` is refused. PAUSED stops the analysis (operators hold a rollout
while they look); `resume` starts a fresh interval, so nothing recorded while paused is
ever judged.

The caller's contract: report every countable request of the route with
`record(side, failed, latency, now)` (a client's 4xx says nothing about either backend:
skip it); ask `due(now)` on a timer and call `evaluate(now)` when it says True; apply
`decision.weight_after` to the route's split and send every decision to the audit log and
metrics. Replicas that follow one decider take its `export()` and `restore` it.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import ClientError
from gateway.resilience.divergence import js_distance_counts

FULL_WEIGHT = 100.0
DEFAULT_P99_FLOOR = 0.001  # seconds; below a millisecond latency differences are noise
MAX_OUTPUT_LABELS = 64  # distinct output labels kept per side; later new ones share one
OTHER_OUTPUT = "__other__"


class CanarySide(enum.Enum):
    """Which backend of the route served a request."""

    BASELINE = "baseline"
    CANARY = "canary"


class CanaryPhase(enum.Enum):
    """Where the rollout stands; PROMOTED and ROLLED_BACK are final."""

    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"

    @property
    def is_terminal(self) -> bool:
        return self in (CanaryPhase.PROMOTED, CanaryPhase.ROLLED_BACK)


class Verdict(enum.Enum):
    """The judgement of one interval."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # too few samples on either side to judge


class CanaryAction(enum.StrEnum):
    """What a decision did; the value is the metric label and the audit log's word."""

    PROMOTE_STEP = "promote-step"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTED = "promoted"
    WAIT = "wait"
    PAUSE = "pause"
    RESUME = "resume"
    OPERATOR_ROLLBACK = "operator-rollback"
    OPERATOR_PROMOTE = "operator-promote"


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """Canary analysis settings for one route.

    steps: canary weights in percent, strictly ascending, each in (0, 100]; the first must
        be below 100 (a canary must start beside a baseline to be compared with it).
    interval: seconds of each comparison interval.
    max_error_rate_increase: fraction in [0, 1); the canary fails when its error rate minus
        the baseline's exceeds it (0.01: at most one percentage point worse).
    max_p99_ratio: >= 1; the canary fails when its p99 / the baseline's p99 exceeds it.
    min_samples: requests each side must serve in an interval before it is judged.
    max_failed_checks: failed checks in a row that roll the canary back.
    p99_floor: seconds; both p99s are raised to it before they are divided.
    max_output_drift: Jensen-Shannon distance in (0, 1] the output labels may reach, or None
        for no output gate. output_feature names the labels (None: the answer's own
        predicted class or finish reason); min_output_samples labels per side to judge.
    """

    steps: tuple[float, ...]
    interval: float
    max_error_rate_increase: float
    max_p99_ratio: float
    min_samples: int = 50
    max_failed_checks: int = 2
    p99_floor: float = DEFAULT_P99_FLOOR
    max_output_drift: float | None = None
    output_feature: str | None = None
    min_output_samples: int = 50

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps:
            raise ValueError("canary steps must list at least one weight, e.g. (5, 25, 50, 100)")
        for s in steps:
            if not (isinstance(s, int | float) and 0.0 < s <= FULL_WEIGHT):
                raise ValueError(f"canary steps must be percentages in (0, 100], got {s!r}")
        for a, b in itertools.pairwise(steps):
            if not a < b:
                raise ValueError(
                    f"canary steps must be strictly ascending, got {a!r} followed by {b!r}"
                )
        if steps[0] >= FULL_WEIGHT:
            raise ValueError(
                "canary steps must start below 100: a canary that starts with all the "
                "traffic has no baseline to be compared with"
            )
        object.__setattr__(self, "steps", tuple(float(s) for s in steps))
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise ValueError(
                f"canary interval must be a positive number of seconds, got {self.interval!r}"
            )
        if not 0.0 <= self.max_error_rate_increase < 1.0:
            raise ValueError(
                "canary max_error_rate_increase must be a fraction in [0, 1) "
                f"(0.01 for one percentage point), got {self.max_error_rate_increase!r}"
            )
        if not (self.max_p99_ratio >= 1.0 and math.isfinite(self.max_p99_ratio)):
            raise ValueError(
                "canary max_p99_ratio must be a finite ratio of at least 1.0, "
                f"got {self.max_p99_ratio!r}"
            )
        if self.min_samples < 1:
            raise ValueError(f"canary min_samples must be at least 1, got {self.min_samples!r}")
        if self.max_failed_checks < 1:
            raise ValueError(
                f"canary max_failed_checks must be at least 1, got {self.max_failed_checks!r}"
            )
        if self.max_output_drift is not None and not 0.0 < self.max_output_drift <= 1.0:
            raise ValueError(
                "canary max_output_drift is a Jensen-Shannon distance in (0, 1], "
                f"got {self.max_output_drift!r}"
            )
        if self.min_output_samples < 1:
            raise ValueError(
                f"canary min_output_samples must be at least 1, got {self.min_output_samples!r}"
            )
        if not (self.p99_floor > 0 and math.isfinite(self.p99_floor)):
            raise ValueError(
                f"canary p99_floor must be a positive number of seconds, got {self.p99_floor!r}"
            )


@dataclass(frozen=True, slots=True)
class SideStats:
    """One side's counts over one interval; `p99` (seconds) is None when it served nothing."""

    requests: int
    errors: int
    error_rate: float
    p99: float | None
    outputs: int = 0  # output labels reported (sampled answers)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99": self.p99,
            "outputs": self.outputs,
        }


@dataclass(frozen=True, slots=True)
class CanaryDecision:
    """One step of the rollout: what was judged, what changed, and why in plain words.

    `verdict` is None for operator actions; `canary` and `baseline` are the judged
    interval's stats (None for operator actions, which judge nothing). The caller applies
    `weight_after` to the route's split and records the decision in the audit log.
    """

    at: float
    verdict: Verdict | None
    action: CanaryAction
    weight_before: float
    weight_after: float
    phase: CanaryPhase
    reason: str
    canary: SideStats | None = None
    baseline: SideStats | None = None
    output_drift: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the audit log and the admin API."""
        return {
            "at": self.at,
            "verdict": None if self.verdict is None else self.verdict.value,
            "action": self.action.value,
            "weight_before": self.weight_before,
            "weight_after": self.weight_after,
            "phase": self.phase.value,
            "reason": self.reason,
            "canary": None if self.canary is None else self.canary.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "output_drift": self.output_drift,
        }


# --- latency histogram ---------------------------------------------------------------------

_HIST_MIN = 1e-4  # seconds; everything faster shares the first bucket
_HIST_PER_DOUBLING = 16  # bucket bounds grow by 2**(1/16): at most ~4.4 % relative error
_HIST_DOUBLINGS = 27  # 0.1 ms * 2**27 ≈ 3.7 hours; anything slower shares the last bucket
_HIST_BUCKETS = 1 + _HIST_PER_DOUBLING * _HIST_DOUBLINGS


class LatencyHistogram:
    """Latencies in fixed log-spaced buckets: O(1) `record`, fixed memory, quantiles to ~4 %.

    A quantile is reported as the upper bound of the bucket holding its rank, clamped to
    the smallest and largest latency actually seen (so a side whose requests all took the
    same time reports that time exactly). Both sides of a canary comparison carry the same
    bucketing error, so their ratio is off by at most one bucket width.
    """

    __slots__ = ("_counts", "_max", "_min", "_n")

    def __init__(self) -> None:
        self._counts = [0] * _HIST_BUCKETS
        self._n = 0
        self._min = math.inf
        self._max = 0.0

    @property
    def count(self) -> int:
        return self._n

    def record(self, seconds: float) -> None:
        """Add one latency (negative or NaN values count as 0)."""
        value = seconds if seconds > 0.0 else 0.0
        if value <= _HIST_MIN:
            i = 0
        else:
            i = 1 + int(math.log2(value / _HIST_MIN) * _HIST_PER_DOUBLING)
            if i >= _HIST_BUCKETS:
                i = _HIST_BUCKETS - 1
        self._counts[i] += 1
        self._n += 1
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def quantile(self, q: float) -> float | None:
        """The `q` quantile (0.99 for p99), nearest-rank; None when nothing was recorded."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be a fraction in [0, 1] (0.99 for p99), got {q!r}")
        if self._n == 0:
            return None
        rank = max(1, math.ceil(q * self._n))
        seen = 0
        index = _HIST_BUCKETS - 1
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                index = i
                break
        if index == _HIST_BUCKETS - 1:
            return self._max  # the overflow bucket has no upper bound but what was seen
        upper = _HIST_MIN * math.pow(2.0, index / _HIST_PER_DOUBLING)
        return min(max(upper, self._min), self._max)


class _Tally:
    """One side's requests, errors and latencies over the current interval."""

    __slots__ = ("errors", "latencies", "outputs", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies = LatencyHistogram()
        self.outputs: dict[str, int] = {}

    def add_outputs(self, labels: Iterable[str]) -> None:
        outputs = self.outputs
        for label in labels:
            if label in outputs:
                outputs[label] += 1
            elif len(outputs) < MAX_OUTPUT_LABELS:
                outputs[label] = 1
            else:
                outputs[OTHER_OUTPUT] = outputs.get(OTHER_OUTPUT, 0) + 1

    def stats(self) -> SideStats:
        return SideStats(
            requests=self.requests,
            errors=self.errors,
            error_rate=self.errors / self.requests if self.requests else 0.0,
            p99=self.latencies.quantile(0.99),
            outputs=sum(self.outputs.values()),
        )


# --- the analysis --------------------------------------------------------------------------


class CanaryAnalysis:
    """One route's rollout; see the module docstring for the rules and the caller's contract.

    `now` starts the first interval. `step` (an index into `config.steps`), `phase` and
    `failed_checks` let `restore` resume a rollout; a new rollout leaves them alone.
    Operator actions and `evaluate` raise ClientError when the phase forbids them (a
    finished rollout cannot be paused, a running one cannot be resumed).
    """

    __slots__ = (
        "_baseline",
        "_canary",
        "_failed_checks",
        "_interval_start",
        "_phase",
        "_step",
        "config",
    )

    def __init__(
        self,
        config: CanaryConfig,
        now: float,
        *,
        step: int = 0,
        phase: CanaryPhase = CanaryPhase.PROGRESSING,
        failed_checks: int = 0,
    ) -> None:
        if not 0 <= step < len(config.steps):
            raise ValueError(
                f"canary step must index the {len(config.steps)} configured steps, got {step!r}"
            )
        if not phase.is_terminal and config.steps[step] >= FULL_WEIGHT:
            raise ValueError(
                f"canary step {step} is the 100 % step, which only a promoted canary reaches"
            )
        if not 0 <= failed_checks < config.max_failed_checks:
            raise ValueError(
                f"canary failed_checks must be in [0, {config.max_failed_checks}), "
                f"got {failed_checks!r}"
            )
        self.config = config
        self._step = step
        self._phase = phase
        self._failed_checks = failed_checks
        self._interval_start = float(now)
        self._canary = _Tally()
        self._baseline = _Tally()

    # --- questions ---------------------------------------------------------------------------

    @property
    def phase(self) -> CanaryPhase:
        return self._phase

    @property
    def weight(self) -> float:
        """The canary's share of the route's traffic in percent, to apply to the split."""
        if self._phase is CanaryPhase.PROMOTED:
            return FULL_WEIGHT
        if self._phase is CanaryPhase.ROLLED_BACK:
            return 0.0
        return self.config.steps[self._step]

    @property
    def step(self) -> int:
        """Index into `config.steps` of the current (or last) step."""
        return self._step

    @property
    def failed_checks(self) -> int:
        """Failed checks in a row so far; the rollback comes at `config.max_failed_checks`."""
        return self._failed_checks

    @property
    def interval_start(self) -> float:
        return self._interval_start

    @property
    def next_check_at(self) -> float | None:
        """When the current interval ends (the caller's timer); None unless PROGRESSING."""
        if self._phase is not CanaryPhase.PROGRESSING:
            return None
        return self._interval_start + self.config.interval

    def due(self, now: float) -> bool:
        """True when the current interval has ended and the analysis is PROGRESSING."""
        return (
            self._phase is CanaryPhase.PROGRESSING
            and now >= self._interval_start + self.config.interval
        )

    def interval_stats(self) -> tuple[SideStats, SideStats]:
        """(canary, baseline) over the current interval so far, for the admin view."""
        return self._canary.stats(), self._baseline.stats()

    # --- reports -----------------------------------------------------------------------------

    def record(self, side: CanarySide, failed: bool, latency: float, now: float) -> None:
        """Count one finished request of `side` (latency in seconds) in the current interval.

        Ignored unless PROGRESSING. A report whose `now` precedes the interval start (it was
        timed before the last `evaluate`) still counts in the current interval: both sides
        are affected alike, so the comparison stays fair.
        """
        if self._phase is not CanaryPhase.PROGRESSING:
            return
        tally = self._canary if side is CanarySide.CANARY else self._baseline
        tally.requests += 1
        if failed:
            tally.errors += 1
        tally.latencies.record(latency)

    def record_output(self, side: CanarySide, labels: Iterable[str], now: float) -> None:
        """Count the output labels of one sampled answer of `side` in the current interval.

        Ignored unless PROGRESSING. Reported after the answer was sent (by the quality
        worker), so it may arrive after the interval it was served in: it counts in the
        current one, for either side alike.
        """
        if self._phase is not CanaryPhase.PROGRESSING:
            return
        (self._canary if side is CanarySide.CANARY else self._baseline).add_outputs(labels)

    # --- the check ---------------------------------------------------------------------------

    def evaluate(self, now: float) -> CanaryDecision:
        """Judge everything recorded since the interval started, act on it, start a new one.

        Meant to be called when `due(now)` is True; called earlier it judges the shorter
        interval (still the same one for both sides). Raises ClientError unless PROGRESSING.
        """
        self._require_active("evaluate", paused_ok=False)
        canary, baseline = self._canary.stats(), self._baseline.stats()
        drift = self._output_drift()
        self._start_interval(now)
        before = self.weight
        cfg = self.config

        if canary.requests < cfg.min_samples or baseline.requests < cfg.min_samples:
            reason = (
                f"too few samples to judge: canary {canary.requests}, baseline "
                f"{baseline.requests} requests (need {cfg.min_samples} each); "
                f"holding at {_weight(before)}"
            )
            return self._decide(
                now, Verdict.WAIT, CanaryAction.WAIT, before, reason, canary, baseline, drift
            )

        failures, findings = self._judge(canary, baseline)
        if cfg.max_output_drift is not None:
            if drift is None:
                findings += (
                    f"; outputs: canary {canary.outputs}, baseline {baseline.outputs} labels"
                    f" (need {cfg.min_output_samples} each)"
                )
                if not failures:
                    reason = f"too few outputs to judge: {findings}; holding at {_weight(before)}"
                    return self._decide(
                        now,
                        Verdict.WAIT,
                        CanaryAction.WAIT,
                        before,
                        reason,
                        canary,
                        baseline,
                        drift,
                    )
            else:
                drift_ok = drift <= cfg.max_output_drift + 1e-12
                failures += not drift_ok
                findings += (
                    f"; output drift {drift:.3f} {'<=' if drift_ok else '>'} "
                    f"{cfg.max_output_drift:g} (Jensen-Shannon distance)"
                )
        if not failures:
            self._failed_checks = 0
            nxt = self._step + 1
            if nxt >= len(cfg.steps) or cfg.steps[nxt] >= FULL_WEIGHT:
                self._phase = CanaryPhase.PROMOTED
                self._step = len(cfg.steps) - 1
                action = CanaryAction.PROMOTED
                outcome = f"promoted: {_weight(before)} -> {_weight(FULL_WEIGHT)}"
            else:
                self._step = nxt
                action = CanaryAction.PROMOTE_STEP
                outcome = f"next step: {_weight(before)} -> {_weight(self.weight)}"
            reason = f"passed: {findings}; {outcome}"
            return self._decide(now, Verdict.PASS, action, before, reason, canary, baseline, drift)

        self._failed_checks += 1
        streak = f"failed check {self._failed_checks} of {cfg.max_failed_checks} in a row"
        if self._failed_checks >= cfg.max_failed_checks:
            self._phase = CanaryPhase.ROLLED_BACK
            self._failed_checks = 0
            reason = f"{streak}: {findings}; rolled back: {_weight(before)} -> {_weight(0.0)}"
            return self._decide(
                now, Verdict.FAIL, CanaryAction.ROLLBACK, before, reason, canary, baseline, drift
            )
        reason = f"{streak}: {findings}; holding at {_weight(before)}"
        return self._decide(
            now, Verdict.FAIL, CanaryAction.HOLD, before, reason, canary, baseline, drift
        )

    def _output_drift(self) -> float | None:
        """The JS distance of this interval's output labels, or None (gate off, too few)."""
        cfg = self.config
        if cfg.max_output_drift is None:
            return None
        c, b = self._canary.outputs, self._baseline.outputs
        if min(sum(c.values()), sum(b.values())) < cfg.min_output_samples:
            return None
        return js_distance_counts(c, b)

    def _judge(self, canary: SideStats, baseline: SideStats) -> tuple[int, str]:
        """(number of broken gates, the gates' numbers in words)."""
        cfg = self.config
        increase = canary.error_rate - baseline.error_rate
        # the epsilon keeps a difference that equals the gate on paper from failing on rounding
        errors_ok = increase <= cfg.max_error_rate_increase + 1e-12
        error_text = (
            f"canary error rate {_pct(canary.error_rate)} vs baseline "
            f"{_pct(baseline.error_rate)} ({_signed_pct(increase)} "
            f"{'<=' if errors_ok else '>'} {_signed_pct(cfg.max_error_rate_increase)})"
        )
        # both sides have at least min_samples >= 1 requests, so both p99s exist
        c99 = max(canary.p99 or 0.0, cfg.p99_floor)
        b99 = max(baseline.p99 or 0.0, cfg.p99_floor)
        ratio = c99 / b99
        latency_ok = ratio <= cfg.max_p99_ratio + 1e-12
        latency_text = (
            f"canary p99 {_ms(canary.p99)} vs baseline {_ms(baseline.p99)} "
            f"(x{ratio:.2f} {'<=' if latency_ok else '>'} x{cfg.max_p99_ratio:.2f})"
        )
        return (not errors_ok) + (not latency_ok), f"{error_text}; {latency_text}"

    # --- operators ---------------------------------------------------------------------------

    def pause(self, now: float, *, by: str = "operator", why: str = "") -> CanaryDecision:
        """Stop judging and hold the weight until `resume`; refused unless PROGRESSING.

        `by` says who holds it (an operator, or the error-budget policy), `why` adds its reason.
        """
        self._require_active("pause", paused_ok=False)
        before = self.weight
        self._phase = CanaryPhase.PAUSED
        self._start_interval(now)
        reason = f"paused by {by} at {_weight(before)}" + (f": {why}" if why else "")
        return self._decide(now, None, CanaryAction.PAUSE, before, reason)

    def resume(self, now: float, *, by: str = "operator", why: str = "") -> CanaryDecision:
        """Start judging again with a fresh interval; refused unless PAUSED."""
        if self._phase is not CanaryPhase.PAUSED:
            raise ClientError(f"cannot resume a canary analysis that is {self._phase.value}")
        before = self.weight
        self._phase = CanaryPhase.PROGRESSING
        self._start_interval(now)
        reason = f"resumed by {by} at {_weight(before)}; a fresh interval starts" + (
            f": {why}" if why else ""
        )
        return self._decide(now, None, CanaryAction.RESUME, before, reason)

    def promote(self, now: float) -> CanaryDecision:
        """Give the canary all the traffic now, whatever the analysis says."""
        self._require_active("promote", paused_ok=True)
        before = self.weight
        self._phase = CanaryPhase.PROMOTED
        self._step = len(self.config.steps) - 1
        self._failed_checks = 0
        self._start_interval(now)
        reason = f"promoted by operator: {_weight(before)} -> {_weight(FULL_WEIGHT)}"
        return self._decide(now, None, CanaryAction.OPERATOR_PROMOTE, before, reason)

    def rollback(self, now: float, reason: str, *, by: str = "operator") -> CanaryDecision:
        """Take all traffic off the canary now; `reason` is kept for the audit."""
        self._require_active("roll back", paused_ok=True)
        before = self.weight
        self._phase = CanaryPhase.ROLLED_BACK
        self._failed_checks = 0
        self._start_interval(now)
        text = f"rolled back by {by}: {_weight(before)} -> {_weight(0.0)}"
        if reason:
            text = f"{text}: {reason}"
        return self._decide(now, None, CanaryAction.OPERATOR_ROLLBACK, before, text)

    # --- sharing -----------------------------------------------------------------------------

    def export(self) -> dict[str, object]:
        """Plain JSON-ready state for replicas that follow one decider.

        The current interval's samples are not part of it: a replica that takes over judges
        from what it records itself, on the same interval clock.
        """
        return {
            "phase": self._phase.value,
            "step": self._step,
            "failed_checks": self._failed_checks,
            "interval_start": self._interval_start,
        }

    @classmethod
    def restore(cls, config: CanaryConfig, state: Mapping[str, object]) -> CanaryAnalysis:
        """Rebuild an analysis from `export()`; ValueError names what is wrong with `state`."""
        try:
            phase = CanaryPhase(state["phase"])
        except (KeyError, ValueError):
            raise ValueError(
                f"canary state needs a phase among {[p.value for p in CanaryPhase]}, "
                f"got {state.get('phase')!r}"
            ) from None
        step = _state_int(state, "step")
        failed_checks = _state_int(state, "failed_checks")
        start = state.get("interval_start")
        if (
            isinstance(start, bool)
            or not isinstance(start, int | float)
            or not math.isfinite(start)
        ):
            raise ValueError(f"canary state needs a finite interval_start, got {start!r}")
        return cls(config, float(start), step=step, phase=phase, failed_checks=failed_checks)

    # --- internals ---------------------------------------------------------------------------

    def _require_active(self, what: str, *, paused_ok: bool) -> None:
        phase = self._phase
        if phase is CanaryPhase.PROGRESSING or (paused_ok and phase is CanaryPhase.PAUSED):
            return
        raise ClientError(f"cannot {what} a canary analysis that is {phase.value}")

    def _start_interval(self, now: float) -> None:
        self._interval_start = float(now)
        self._canary = _Tally()
        self._baseline = _Tally()

    def _decide(
        self,
        now: float,
        verdict: Verdict | None,
        action: CanaryAction,
        before: float,
        reason: str,
        canary: SideStats | None = None,
        baseline: SideStats | None = None,
        output_drift: float | None = None,
    ) -> CanaryDecision:
        return CanaryDecision(
            output_drift=output_drift,
            at=now,
            verdict=verdict,
            action=action,
            weight_before=before,
            weight_after=self.weight,
            phase=self._phase,
            reason=reason,
            canary=canary,
            baseline=baseline,
        )


def _state_int(state: Mapping[str, object], key: str) -> int:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"canary state needs an integer {key}, got {value!r}")
    return value


def _pct(fraction: float) -> str:
    # two decimals only where one would round a real difference away
    digits = 2 if 0.0 < abs(fraction) < 0.01 else 1
    return f"{fraction * 100:.{digits}f}%"


def _signed_pct(fraction: float) -> str:
    text = _pct(fraction)
    return text if text.startswith("-") else f"+{text}"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _weight(percent: float) -> str:
    return f"{percent:g}%"
