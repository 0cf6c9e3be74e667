"""Tail latency in virtual time: the real hedging, budget and balancer objects, simulated I/O.

Why a simulation: whether hedging cuts a tail depends on where its delay lands between
the modes of a latency distribution, and a two-core machine shared with other work adds
its own jitter to every real measurement. Here time is virtual and every latency is
drawn from a seeded generator, so a run is exact, repeatable and takes milliseconds;
the decisions are made by the gateway's own pure objects (`HedgePolicy`,
`HedgeDelayEstimator`, `TokenBudget`, `LocalityBalancer`, `PeakEwma`), fed exactly as
`gateway.proxy.attempts` feeds them. Only the I/O is simulated: an endpoint answers an
attempt after a latency drawn from its `LatencyShape`, with no queueing (a model server
with spare capacity).

The orchestration mirrors the hedged attempt loop: each request deposits in the hedge
budget, picks a first endpoint, and arms a hedge timer at the delay; when the timer
fires with no answer, the policy decides (max_extra, time left, budget) and a hedge goes
to an endpoint not yet tried, preferably in another region; the first answer wins and
the others are cancelled. Every finished attempt is reported to its endpoint's latency
estimate (a cancelled one as a lower bound), and every hedged request's first attempt to
the delay estimator.

Each request also records what its first attempt alone would have taken (`first`): the
unhedged latency of the same request in the same run, the baseline hedging is judged
against.

    python -m gateway.loadtest.tailsim       # the table of docs/performance.md
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.resilience.balance import (
    BalanceConfig,
    BalancerKind,
    EndpointInfo,
    LocalityBalancer,
    LocalityConfig,
    peak_ewma_load,
)
from gateway.resilience.budget import TokenBudget
from gateway.resilience.hedge import HedgeConfig, HedgeDelayEstimator, HedgePolicy
from gateway.resilience.windows import LatencyWindow, PeakEwma

__all__ = [
    "NOISY",
    "NO_NOISE",
    "SHAPES",
    "EndpointShape",
    "LatencyShape",
    "MachineNoise",
    "TailResult",
    "TailScenario",
    "percentile",
    "recommended_hedging",
    "simulate",
    "table",
]


@dataclass(frozen=True, slots=True)
class LatencyShape:
    """An endpoint's latency: a fast mode and a share of calls `tail_factor` x slower.

    base: the fast mode's centre, seconds.
    jitter: the fast mode's spread, a fraction: uniform in base x [1 - jitter, 1 + jitter];
        0 is an exact fast mode (every fast call takes `base`), as a GPU server's can be.
    tail_rate, tail_factor: a tail call takes base x tail_factor (a GC pause, a cold cache).
    """

    base: float
    jitter: float = 0.0
    tail_rate: float = 0.0
    tail_factor: float = 1.0

    def draw(self, rng: random.Random) -> float:
        u = rng.random()
        if u < self.tail_rate:
            return self.base * self.tail_factor
        if not self.jitter:
            return self.base
        return self.base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


@dataclass(frozen=True, slots=True)
class MachineNoise:
    """What the gateway's own machine adds to every latency it measures.

    floor: a fixed overhead per attempt, seconds; spread: the mean of an exponential extra
    per attempt. busy: the extra while a noisy neighbour holds the CPU, for `busy_share`
    of the time in spells averaging `spell` seconds (on and off spells are exponential).
    Slow drifts like these are what a delay computed over the last seconds lags behind.
    """

    floor: float = 0.0
    spread: float = 0.0
    busy: float = 0.0
    busy_share: float = 0.0
    spell: float = 2.0

    def spells(self, rng: random.Random, duration: float) -> list[tuple[float, float]]:
        """The busy spells over `duration`, as (start, end) pairs in time order."""
        if not self.busy or not self.busy_share:
            return []
        out = []
        t = 0.0
        on_mean = self.spell
        off_mean = self.spell * (1.0 - self.busy_share) / self.busy_share
        while t < duration:
            t += rng.expovariate(1.0 / off_mean)
            end = t + rng.expovariate(1.0 / on_mean)
            out.append((t, end))
            t = end
        return out


NO_NOISE = MachineNoise()
# A gateway on a shared two-core machine: about 1 ms of its own, and another 4 ms for a
# third of the time while a neighbour burns CPU.
NOISY = MachineNoise(floor=0.0005, spread=0.0005, busy=0.004, busy_share=0.3, spell=2.0)


@dataclass(frozen=True, slots=True)
class EndpointShape:
    region: str
    latency: LatencyShape
    weight: int = 1


@dataclass(frozen=True, slots=True)
class TailScenario:
    """Endpoints, and open-loop Poisson traffic at `rate` per second for `duration` seconds."""

    name: str
    endpoints: tuple[EndpointShape, ...]
    rate: float = 50.0
    duration: float = 30.0
    timeout: float = 5.0
    local_region: str = "local"
    noise: MachineNoise = NO_NOISE


@dataclass(slots=True)
class TailResult:
    """What one run measured; latencies in seconds, one entry per request."""

    latencies: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    backend_requests: int = 0
    hedges: int = 0
    hedges_to_first_endpoint: int = 0
    hedges_to_other_region: int = 0
    hedges_won: int = 0
    picks: list[int] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def extra_ratio(self) -> float:
        """Backend requests beyond one per request, per request (hedging's extra load)."""
        return (self.backend_requests - self.requests) / self.requests if self.requests else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    def unhedged(self, q: float) -> float:
        """The quantile the same requests would have had with their first attempts alone."""
        return percentile(self.first, q)

    def shares(self) -> list[float]:
        """Each endpoint's share of first attempts."""
        total = sum(self.picks)
        return [p / total if total else 0.0 for p in self.picks]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (`q` = 0.99 for p99); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def recommended_hedging(budget: float = 0.1) -> HedgeConfig:
    """The hedging settings policies/reference.yaml recommends: `delay: adaptive`, 10 % budget."""
    return HedgeConfig(target=0.8 * budget, budget_ratio=budget, max_extra=1)


# event kinds, in the order they are handled when they fall on the same instant: an answer
# arriving exactly at the hedge delay wins before the timer fires (no hedge is sent)
_ANSWER = 0
_HEDGE = 1


class _Attempt:
    __slots__ = ("endpoint", "latency", "live", "request", "start")

    def __init__(self, request: _Request, endpoint: int, start: float, latency: float) -> None:
        self.request = request
        self.endpoint = endpoint
        self.start = start
        self.latency = latency
        self.live = True


class _Request:
    __slots__ = ("attempts", "delay", "done", "extra", "start", "tried")

    def __init__(self, start: float) -> None:
        self.start = start
        self.attempts: list[_Attempt] = []
        self.tried: set[int] = set()
        self.extra = 0
        self.done = False
        self.delay: float | None = None


def simulate(
    scenario: TailScenario,
    hedging: HedgeConfig | None,
    seed: int,
    balance: BalanceConfig | None = None,
    legacy: bool = False,
) -> TailResult:
    """One run of `scenario`: hedging off (None) or on, on the given balancer (p2c default).

    `legacy` computes the delay as the gateway did before the adaptive delay: the
    backend's percentile of every answer that won (overtaken first attempts unrecorded),
    recomputed every 250 ms; kept to show what the adaptive delay fixes.

    Seeds: arrivals, each endpoint's latencies and the balancer draw from their own
    generators, so changing one part of the setup does not reshuffle the others.
    """
    eps = scenario.endpoints
    n = len(eps)
    balance = balance if balance is not None else BalanceConfig()
    balancer = LocalityBalancer(
        LocalityConfig(local_region=scenario.local_region),
        [EndpointInfo(f"e{i}", e.region, e.weight) for i, e in enumerate(eps)],
        balance,
    )
    arrivals = random.Random(f"{seed}/arrivals")
    draws = [random.Random(f"{seed}/endpoint/{i}") for i in range(n)]
    pick_rng = random.Random(f"{seed}/balancer")
    policy = HedgePolicy(hedging) if hedging is not None else None
    budget = TokenBudget(hedging.budget_ratio, reserve=3.0) if hedging is not None else None
    estimator: HedgeDelayEstimator | None = policy.new_estimator() if policy else None
    # the estimate before: every successful attempt (winners only), the backend's p95
    legacy_window = LatencyWindow() if legacy else None
    legacy_cache: list[float | None] = [-1.0, None]
    ewmas = [PeakEwma(balance.decay) for _ in range(n)]
    outstanding = [0] * n
    available = [True] * n
    peak = balance.kind is BalancerKind.PEAK_EWMA
    noise = scenario.noise
    noise_rng = random.Random(f"{seed}/noise")
    spells = noise.spells(random.Random(f"{seed}/spells"), scenario.duration)
    spell_at = 0

    def overhead(now: float) -> float:
        nonlocal spell_at
        extra = noise.floor
        if noise.spread:
            extra += noise_rng.expovariate(1.0 / noise.spread)
        while spell_at < len(spells) and spells[spell_at][1] <= now:
            spell_at += 1
        if spell_at < len(spells) and spells[spell_at][0] <= now:
            extra += noise.busy
        return extra

    result = TailResult(picks=[0] * n)
    events: list[tuple[float, int, int, object]] = []
    seq = 0

    def push(t: float, kind: int, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, kind, seq, payload))

    def loads(now: float) -> list[float]:
        if not peak:
            return [float(o) for o in outstanding]
        return [
            peak_ewma_load(e.value(now), e.observed, o)
            for e, o in zip(ewmas, outstanding, strict=True)
        ]

    def launch(req: _Request, now: float, avoid_region: str | None) -> _Attempt | None:
        pick = balancer.pick(available, loads(now), pick_rng, req.tried, avoid_region)
        if pick is None or pick.excluded:
            return None
        i = pick.index
        attempt = _Attempt(req, i, now, eps[i].latency.draw(draws[i]) + overhead(now))
        req.attempts.append(attempt)
        req.tried.add(i)
        outstanding[i] += 1
        result.backend_requests += 1
        push(now + attempt.latency, _ANSWER, attempt)
        return attempt

    t = arrivals.expovariate(scenario.rate)
    while t < scenario.duration:
        push(t, -1, None)  # arrivals sort before anything else at the same instant
        t += arrivals.expovariate(scenario.rate)

    while events:
        now, kind, _, payload = heapq.heappop(events)
        if kind < 0:
            req = _Request(now)
            if budget is not None:
                budget.deposit()
            first = launch(req, now, None)
            assert first is not None  # every endpoint is available
            result.picks[first.endpoint] += 1
            result.first.append(first.latency)
            if legacy_window is not None and policy is not None:
                if now >= (legacy_cache[0] or 0.0):
                    q = legacy_window.percentile(policy.quantile or 0.95, now)
                    legacy_cache[:] = [now + 0.25, q]
                req.delay = policy.delay(legacy_cache[1])
                if req.delay is not None:
                    push(now + req.delay, _HEDGE, req)
            elif estimator is not None:
                req.delay = estimator.delay(now)
                if req.delay is not None:
                    push(now + req.delay, _HEDGE, req)
        elif kind == _ANSWER:
            attempt = payload
            assert isinstance(attempt, _Attempt)
            if not attempt.live:
                continue
            attempt.live = False
            req = attempt.request
            outstanding[attempt.endpoint] -= 1
            ewmas[attempt.endpoint].observe(now, attempt.latency)
            if legacy_window is not None:
                legacy_window.record(now, attempt.latency)
            req.done = True
            result.latencies.append(now - req.start)
            first = req.attempts[0]
            if attempt is not first:
                result.hedges_won += 1
            for other in req.attempts:
                if other.live:  # the losers are cancelled: they took at least this long
                    other.live = False
                    outstanding[other.endpoint] -= 1
                    ewmas[other.endpoint].observe_at_least(now, now - other.start)
            if estimator is not None and legacy_window is None:
                estimator.observe(now, now - first.start)
        else:
            req = payload  # type: ignore[assignment]
            assert isinstance(req, _Request) and policy is not None and req.delay is not None
            if req.done:
                continue
            remaining = req.start + scenario.timeout - now
            if not policy.should_hedge(req.extra, remaining, req.delay, budget):
                continue
            first_region = eps[req.attempts[0].endpoint].region
            hedge = launch(req, now, first_region)
            if hedge is None:
                continue
            req.extra += 1
            result.hedges += 1
            if hedge.endpoint == req.attempts[0].endpoint:
                result.hedges_to_first_endpoint += 1
            if eps[hedge.endpoint].region != first_region:
                result.hedges_to_other_region += 1
            push(now + req.delay, _HEDGE, req)
    return result


def _two(slow: LatencyShape, fast: LatencyShape) -> tuple[EndpointShape, ...]:
    return (EndpointShape("local", slow), EndpointShape("local", fast))


# The shapes hedging must cut, 20 ms fast modes: a 5 % tail at 20x on one of two endpoints
# (exact fast mode, then a jittering one), and a 2 % tail at 50x on both.
SHAPES: dict[str, TailScenario] = {
    "tail5-exact": TailScenario(
        "5 % at 20x on one of two, exact fast mode",
        _two(LatencyShape(0.020, 0.0, 0.05, 20.0), LatencyShape(0.020)),
    ),
    "tail5-jitter": TailScenario(
        "5 % at 20x on one of two, fast mode 20 ms ± 25 %",
        _two(LatencyShape(0.020, 0.25, 0.05, 20.0), LatencyShape(0.020, 0.25)),
    ),
    "tail5-both": TailScenario(
        "5 % at 20x on both, exact fast mode",
        _two(LatencyShape(0.020, 0.0, 0.05, 20.0), LatencyShape(0.020, 0.0, 0.05, 20.0)),
    ),
    "tail2-both": TailScenario(
        "2 % at 50x on both",
        _two(LatencyShape(0.020, 0.0, 0.02, 50.0), LatencyShape(0.020, 0.0, 0.02, 50.0)),
    ),
}


def table(seeds: int = 10) -> str:
    """The comparison of docs/performance.md: each setup on each shape, quiet and noisy.

    A cell is the mean p99 over the seeds and, in brackets, the worst seed's p99 as a
    fraction of the p99 of the same seed without hedging or balancing.
    """
    setups: list[tuple[str, HedgeConfig | None, BalanceConfig, bool]] = [
        ("no hedging", None, BalanceConfig(), False),
        ("peak_ewma alone", None, BalanceConfig(BalancerKind.PEAK_EWMA), False),
        ("`delay: p95` before", HedgeConfig(percentile=0.95), BalanceConfig(), True),
        ("recommended", recommended_hedging(), BalanceConfig(), False),
        (
            "recommended + peak_ewma",
            recommended_hedging(),
            BalanceConfig(BalancerKind.PEAK_EWMA),
            False,
        ),
    ]
    head = " | ".join(label for label, *_ in setups)
    rows = [
        f"| shape | machine | {head} | extra load, recommended (worst) |",
        "| --- | --- |" + " --- |" * (len(setups) + 1),
    ]
    for key, base in SHAPES.items():
        for machine, noise in (("quiet", NO_NOISE), ("noisy", NOISY)):
            scenario = dataclasses.replace(base, noise=noise)
            baseline = [simulate(scenario, None, s) for s in range(seeds)]
            cells = []
            extra = 0.0
            for label, hedging, balance, legacy in setups:
                runs = [simulate(scenario, hedging, s, balance, legacy) for s in range(seeds)]
                p99 = sum(r.p(0.99) for r in runs) / seeds
                worst = max(r.p(0.99) / b.p(0.99) for r, b in zip(runs, baseline, strict=True))
                cells.append(f"{p99 * 1000:.0f} ms ({worst:.2f})")
                if label == "recommended":
                    extra = max(r.extra_ratio for r in runs)
            rows.append(f"| {key} | {machine} | {' | '.join(cells)} | {extra * 100:.1f} % |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
