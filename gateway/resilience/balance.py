"""Endpoint choice: locality-aware priority levels (Envoy) and power of two choices.

Levels. Endpoints are grouped by region into priority levels: P0 is the gateway's own
region, then the regions of `LocalityConfig.priority` in that order, then every other
region in the order its first endpoint appears. Regions without endpoints are skipped,
so P0 is the first level that has endpoints (the local one whenever it has any).

Load per level (Envoy priority load). Level i's health hᵢ = available weight / total
weight. Its share of traffic is min(1, overprovisioning x hᵢ) of what the levels before
it left over, so the local region keeps all traffic until it drops below 1/1.4 ≈ 71 %
available, then spills gradually: 50 % available locally → 70 % local, 30 % next. When
the levels together cannot take all traffic (Σ min(1, 1.4 x hᵢ) < 1), the loads are
scaled up to sum to 1.

Panic (Envoy). Only when the levels together cannot take all traffic, a level whose own
health is below `panic_threshold` is in panic: traffic sent to it goes to all of its
endpoints, available or not ("route to all rather than none": health checks and
ejection may be wrong, and a 503 is certainly wrong). When every level is in panic
(total panic) traffic goes to all endpoints of all levels, spread by weight. A level in
panic while others can absorb its traffic never panics: load spills instead (local
40 % available and a healthy remote region → 56 % local to the available endpoints,
44 % remote, no panic). `panic_threshold = 0` disables panic: with nothing available,
`pick` returns None.

Within a level: power of two choices (Mitzenmacher). Two distinct candidates are drawn
at random in proportion to their weights, and the one with the lower load per unit of
weight wins (ties: the first drawn). This avoids the herd behaviour of "least loaded"
(every gateway replica piling onto the same idle endpoint) while still steering away
from slow, backed-up endpoints. What "load" is depends on the backend's `BalancerKind`:

- `p2c` (the default): outstanding requests. Cheap and blind to latency: two endpoints
  that answer every request, one in 20 ms and one with a 400 ms tail, look alike
  between slow answers.
- `peak_ewma` (Finagle, Linkerd): the endpoint's peak-sensitive moving average of
  latency (`windows.PeakEwma`) x (outstanding + 1), see `peak_ewma_load`. A slow answer
  raises the estimate at once, fast answers lower it over `decay` seconds, so an
  endpoint with a persistent tail, or in a slower region of the same level, gets less
  traffic. It never starves: a `min_share` of the picks ignores the load and goes by
  weight alone, so every usable endpoint gets at least `min_share` of its fair
  (weight-proportional) share of its level's traffic, answers that traffic, and is seen
  to recover when it does. Without it a tailing endpoint would get only the requests
  its decaying estimate lets through, and a recovered one would wait for its old peak
  to decay before it is believed.

Exclusion and region avoidance are preferences, in this order of strength:
`exclude` (endpoints this request already tried) > `avoid_region` (for a hedge: another
failure domain than the first attempt's) > the priority load. `pick` looks for a
candidate in these tiers and takes the first tier that has one:

1. the chosen level, not excluded, not in `avoid_region`;
2. the other levels in priority order, not excluded, not in `avoid_region`;
3. the chosen level, not excluded;    4. the other levels, not excluded;
5. the chosen level, excluded allowed; 6. the other levels, excluded allowed.

A candidate must be usable: available, or in a level in panic. So a retry goes back to an
endpoint it already tried only when no other usable endpoint exists at all; it is then
returned with `Pick.excluded=True`, and a caller that must never reuse an endpoint (a
breaker refused it) checks that flag. `pick` returns None only when there is no usable
endpoint at all: no endpoints, or nothing available with panic disabled
(`panic_threshold=0`).

The caller's contract: pass the current availability per endpoint (healthy, not ejected,
not draining, breaker not known open) and each endpoint's load as the backend's
`BalancerKind` measures it (outstanding requests, or `peak_ewma_load` of its `PeakEwma`
and outstanding requests), in the order of the endpoints given to the constructor;
feed every finished attempt's latency to its endpoint's `PeakEwma` (a cancelled or
timed-out one as a lower bound); count `Pick.panic` in metrics; add each tried endpoint
to the request's `exclude` set.
"""

from __future__ import annotations

import enum
import math
import random
from bisect import bisect_right
from collections.abc import Sequence, Set
from dataclasses import dataclass

_EPS = 1e-9
# The load of an endpoint with requests outstanding and no latency measured yet: above any
# measured one, so a new endpoint takes one request at a time until it has answered once.
UNMEASURED_PENALTY = 1e6


class BalancerKind(enum.Enum):
    """How the load of an endpoint is measured for the two choices; `.value` is the policy key."""

    P2C = "p2c"
    PEAK_EWMA = "peak_ewma"


@dataclass(frozen=True, slots=True)
class BalanceConfig:
    """Balancing within a level.

    kind: what load the two choices compare (see the module doc).
    min_share: peak_ewma only; the fraction of picks spread by weight alone, so each
        usable endpoint gets at least this fraction of its fair share. 0 disables it.
    decay: peak_ewma only; seconds over which fast answers make a latency peak forgotten.
    """

    kind: BalancerKind = BalancerKind.P2C
    min_share: float = 0.1
    decay: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, BalancerKind):
            raise ValueError(f"balancer kind must be a BalancerKind, got {self.kind!r}")
        if not (0.0 <= self.min_share <= 1.0):
            raise ValueError(
                f"balancer min_share must be a fraction in [0, 1], got {self.min_share!r}"
            )
        if not (self.decay > 0 and math.isfinite(self.decay)):
            raise ValueError(
                f"balancer decay must be a positive number of seconds, got {self.decay!r}"
            )


def peak_ewma_load(estimate: float, measured: bool, outstanding: int) -> float:
    """The load peak_ewma compares: latency estimate x (outstanding + 1).

    An endpoint never measured (`measured` False) costs nothing while idle and
    `UNMEASURED_PENALTY` per request outstanding, so it is tried at once but not flooded
    before its first answer says what it costs.
    """
    if not measured:
        return UNMEASURED_PENALTY * outstanding
    return estimate * (outstanding + 1)


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What the balancer needs to know about one endpoint; `weight` ≥ 1 (relative capacity)."""

    id: str
    region: str
    weight: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(
                f"endpoint '{self.id}' weight must be an integer >= 1, got {self.weight!r}"
            )


@dataclass(frozen=True, slots=True)
class LocalityConfig:
    """Locality settings of one backend (Envoy defaults).

    local_region: the gateway replica's own region; its endpoints form P0.
    priority: region order after the local one; unlisted regions follow in the order
        their first endpoint appears.
    overprovisioning: factor on each level's health before it spills load (Envoy 1.4).
    panic_threshold: level health fraction below which, when the levels together cannot
        take all traffic, its traffic goes to all of its endpoints. 0 disables panic.
    """

    local_region: str
    priority: tuple[str, ...] = ()
    overprovisioning: float = 1.4
    panic_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.priority, tuple):
            raise ValueError(f"locality priority must be a tuple of regions, got {self.priority!r}")
        seen: set[str] = set()
        for region in self.priority:
            if region in seen:
                raise ValueError(f"locality priority lists region '{region}' more than once")
            seen.add(region)
        if not (1.0 <= self.overprovisioning <= 1e6):
            raise ValueError(
                f"locality overprovisioning must be a factor >= 1 (Envoy uses 1.4), "
                f"got {self.overprovisioning!r}"
            )
        if not (0.0 <= self.panic_threshold <= 1.0):
            raise ValueError(
                f"locality panic_threshold must be a fraction in [0, 1], "
                f"got {self.panic_threshold!r}"
            )


@dataclass(frozen=True, slots=True)
class Pick:
    """The chosen endpoint.

    index: position in the endpoints given to the balancer.
    priority: its level (0 = the local region, or the first level with endpoints).
    panic: chosen while its level was in panic (it may be unavailable); count it.
    excluded: it was in `exclude`: no other usable endpoint was left.
    """

    index: int
    priority: int
    panic: bool
    excluded: bool = False


class LocalityBalancer:
    """Picks an endpoint per attempt; immutable, built once per backend per policy snapshot."""

    __slots__ = (
        "_all_members",
        "_balance",
        "_config",
        "_equal_weights",
        "_level_of",
        "_level_total",
        "_levels",
        "_members",
        "_min_share",
        "_of",
        "_regions",
        "_threshold",
        "_weights",
        "endpoints",
    )

    def __init__(
        self,
        config: LocalityConfig,
        endpoints: Sequence[EndpointInfo],
        balance: BalanceConfig | None = None,
    ) -> None:
        self._config = config
        self._balance = balance if balance is not None else BalanceConfig()
        # min_share is the peak_ewma floor: p2c's load (outstanding) already drains
        self._min_share = (
            self._balance.min_share if self._balance.kind is BalancerKind.PEAK_EWMA else 0.0
        )
        self.endpoints = tuple(endpoints)
        order: list[str] = []
        present = {e.region for e in self.endpoints}
        for region in (config.local_region, *config.priority):
            if region in present and region not in order:
                order.append(region)
        for e in self.endpoints:
            if e.region not in order:
                order.append(e.region)
        level_index = {region: i for i, region in enumerate(order)}
        self._levels = tuple(order)
        self._level_of = tuple(level_index[e.region] for e in self.endpoints)
        self._regions = tuple(e.region for e in self.endpoints)
        self._weights = tuple(e.weight for e in self.endpoints)
        self._members = tuple(
            tuple(i for i, lvl in enumerate(self._level_of) if lvl == level)
            for level in range(len(order))
        )
        self._all_members = tuple(range(len(self.endpoints)))
        self._level_total = tuple(
            sum(self._weights[i] for i in members) for members in self._members
        )
        self._equal_weights = len(set(self._weights)) <= 1
        self._of = config.overprovisioning
        self._threshold = config.panic_threshold

    @property
    def config(self) -> LocalityConfig:
        return self._config

    @property
    def balance(self) -> BalanceConfig:
        return self._balance

    @property
    def levels(self) -> tuple[str, ...]:
        """The region of each priority level, P0 first."""
        return self._levels

    def level_of(self, index: int) -> int:
        return self._level_of[index]

    # --- priority load -------------------------------------------------------------------

    def _health(self, available: Sequence[bool]) -> list[float]:
        if len(available) != len(self._weights):
            raise ValueError(
                f"available has {len(available)} entries for {len(self._weights)} endpoints"
            )
        up = [0] * len(self._levels)
        level_of = self._level_of
        weights = self._weights
        for i, ok in enumerate(available):
            if ok:
                up[level_of[i]] += weights[i]
        return [u / t for u, t in zip(up, self._level_total, strict=True)]

    def _loads(self, health: list[float]) -> tuple[list[float], list[bool], bool]:
        """Per-level load fractions, per-level panic flags, and whether all levels panic."""
        of = self._of
        left = 1.0
        loads: list[float] = []
        for h in health:
            load = min(left, of * h)
            if load < 0.0:
                load = 0.0
            loads.append(load)
            left -= load
        total = sum(loads)
        if total >= 1.0 - _EPS:
            return loads, [False] * len(loads), False
        threshold = self._threshold
        panic = [h < threshold for h in health]
        if panic and all(panic):
            # total panic: spread over all endpoints by weight (Envoy: by host count)
            grand = sum(self._level_total)
            return [t / grand for t in self._level_total], panic, True
        if total <= 0.0:
            return [0.0] * len(loads), panic, False  # nothing available, panic disabled
        return [x / total for x in loads], panic, False

    def priority_loads(self, available: Sequence[bool]) -> tuple[tuple[float, ...], bool]:
        """(share of traffic per level, whether any level is in panic); for metrics and tests."""
        if not self._levels:
            return (), False
        loads, panic, _ = self._loads(self._health(available))
        return tuple(loads), any(panic[i] and loads[i] > 0 for i in range(len(loads)))

    # --- the pick --------------------------------------------------------------------------

    def pick(
        self,
        available: Sequence[bool],
        outstanding: Sequence[float],
        rng: random.Random,
        exclude: Set[int] = frozenset(),
        avoid_region: str | None = None,
    ) -> Pick | None:
        """The endpoint for the next attempt of a request, or None (see the module doc).

        outstanding: each endpoint's load as its `BalancerKind` measures it: requests
            outstanding (p2c), or `peak_ewma_load` (peak_ewma).
        """
        if not self._levels:
            return None
        if len(outstanding) != len(self._weights):
            raise ValueError(
                f"outstanding has {len(outstanding)} entries for {len(self._weights)} endpoints"
            )
        loads, panic, total_panic = self._loads(self._health(available))
        if total_panic:
            chosen = self._all_members
            chosen_level = -1
            others: list[tuple[int, ...]] = []
        else:
            chosen_level = self._choose_level(loads, rng.random())
            if chosen_level < 0:
                return None
            chosen = self._members[chosen_level]
            others = [m for lvl, m in enumerate(self._members) if lvl != chosen_level]

        def usable(i: int) -> bool:
            return available[i] or panic[self._level_of[i]]

        regions = self._regions
        tiers = (True, False) if avoid_region is not None else (False,)
        for allow_excluded in (False, True):
            for avoiding in tiers:
                for members in (chosen, *others):
                    cands = [
                        i
                        for i in members
                        if usable(i)
                        and (allow_excluded or i not in exclude)
                        and not (avoiding and regions[i] == avoid_region)
                    ]
                    if cands:
                        index = self._two_choices(cands, outstanding, rng)
                        level = self._level_of[index]
                        return Pick(index, level, panic[level], index in exclude)
        return None

    @staticmethod
    def _choose_level(loads: list[float], r: float) -> int:
        acc = 0.0
        last = -1
        for level, load in enumerate(loads):
            if load <= 0.0:
                continue
            acc += load
            last = level
            if r < acc:
                return level
        return last  # float rounding left r just above the sum; -1 when no level has load

    def _two_choices(
        self, cands: list[int], outstanding: Sequence[float], rng: random.Random
    ) -> int:
        n = len(cands)
        if n == 1:
            return cands[0]
        if self._min_share and rng.random() < self._min_share:
            return self._by_weight(cands, rng)
        if self._equal_weights:
            a = rng.randrange(n)
            b = rng.randrange(n - 1)
            if b >= a:
                b += 1
            i, j = cands[a], cands[b]
            return j if outstanding[j] < outstanding[i] else i
        weights = self._weights
        cum: list[int] = []
        total = 0
        for c in cands:
            total += weights[c]
            cum.append(total)
        a = bisect_right(cum, rng.random() * total)
        if a >= n:
            a = n - 1
        wa = weights[cands[a]]
        start_a = cum[a] - wa
        x = rng.random() * (total - wa)
        if x >= start_a:
            x += wa  # skip over a's interval: b is drawn by weight among the others
        b = bisect_right(cum, x)
        if b >= n:
            b = n - 1
        if b == a:  # only reachable through float rounding at an interval edge
            b = a + 1 if a + 1 < n else a - 1
        i, j = cands[a], cands[b]
        # less load per unit of weight wins: oj/wj < oi/wi without division
        return j if outstanding[j] * weights[i] < outstanding[i] * weights[j] else i

    def _by_weight(self, cands: list[int], rng: random.Random) -> int:
        """One candidate drawn in proportion to its weight, whatever its load."""
        if self._equal_weights:
            return cands[rng.randrange(len(cands))]
        weights = self._weights
        total = sum(weights[c] for c in cands)
        x = rng.random() * total
        for c in cands:
            x -= weights[c]
            if x < 0:
                return c
        return cands[-1]
