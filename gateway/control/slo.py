"""SLOs in motion: count each finished request, keep the budgets, enforce the budget policy.

The request path calls `record` once per finished request (the one-line hook where a
request's outcome is reported); it classifies the request for each SLO of its route and
counts it in the SLO's `SloBudget` (`gateway.slo.budget`) and in the exported
`tailguard_slo_events_total` counter, which the generated Prometheus rules read. Client
errors (4xx) are not counted; neither are requests this policy shed on purpose.

A loop then, every tick: shares the counts with the other replicas through the state store
(when it is shared), computes every SLO's status, publishes it as metrics, asks the
`ErrorBudgetPolicy` what each route must do, and does what changed: freezes or releases a
canary, rolls back a canary that causes the burn, starts or stops shedding. Each action is
written to the audit log and counted. Operators can suspend enforcement on a route for a
while (`tailguard ctl slo override ROUTE --until 1h`).

Budgets are counted in wall time (bucket numbers must agree between replicas). They survive
a reload when the SLO's definition is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.clock import Clock
from gateway.control.canary import CanaryController
from gateway.control.tasks import Ticker
from gateway.errors import BudgetShed, ClientError, RouteNotFound, StoreUnavailable
from gateway.policy.compile import PRIORITY_NAMES, Snapshot
from gateway.resilience.outcome import Outcome
from gateway.slo.budget import (
    BURN_WINDOWS,
    COARSE,
    FINE,
    BucketCounts,
    SliKind,
    SloBudget,
    SloConfig,
    SloStatus,
)
from gateway.slo.enforce import ErrorBudgetPolicy, RouteBudgetDecision
from gateway.state.store import StateStore
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.catalog import Metrics

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

log = logging.getLogger("tailguard.slo")

MAX_TICK = 1.0
MIN_TICK = 0.05
# Keys per store call: a full refresh is a few round trips, not one huge one. A multiple of
# three, so a bucket's good, bad and blame counts always travel in one call.
STORE_CHUNK = 900
_PRIORITY_WORDS = {v: k for k, v in PRIORITY_NAMES.items()}


class _Slo:
    """One SLO's runtime: its budget and the exported counters of each of its routes."""

    __slots__ = ("bad", "budget", "config", "fallback_good", "good", "latency", "threshold")

    def __init__(self, config: SloConfig, budget: SloBudget, metrics: Metrics) -> None:
        self.config = config
        self.budget = budget
        self.latency = config.kind is SliKind.LATENCY
        self.threshold = config.latency_threshold or 0.0
        self.fallback_good = config.fallback_good
        # pre-made so that both series exist (at 0) before the first bad event: rate() needs them
        self.good = {r: metrics.slo_events.labels(config.name, r, "good") for r in config.routes}
        self.bad = {r: metrics.slo_events.labels(config.name, r, "bad") for r in config.routes}


class SloController:
    """Owns one `SloBudget` per SLO of the running policy; see the module docstring."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        metrics: Metrics,
        clock: Clock,
        audit: AuditLog,
        store: StateStore,
        canary: CanaryController,
        replica: str,
    ) -> None:
        self._current = current
        self._m = metrics
        self._clock = clock
        self._audit = audit
        self._store = store
        self._canary = canary
        self.replica = replica  # this replica's share of each shared counter is under its name
        self._policy = ErrorBudgetPolicy()
        self._slos: dict[str, _Slo] = {}
        self._by_route: dict[str, tuple[_Slo, ...]] = {}
        self._shed: dict[str, int] = {}  # route -> shed at this priority value and below
        self._decisions: dict[str, RouteBudgetDecision] = {}
        self._overrides: dict[str, float] = {}  # route -> wall time the override ends
        self._statuses: dict[str, SloStatus] = {}
        self._refresh: set[str] = set()  # SLOs to read in full from the store at the next share
        self.tick_interval = MAX_TICK
        self._ticker = Ticker(self.step, lambda: self.tick_interval, log, "SLO tick")
        self.actions: list[dict[str, object]] = []  # recent, for the admin API

    # --- snapshot --------------------------------------------------------------------------

    def sync(self, snapshot: Snapshot) -> None:
        """Adopt a new snapshot: keep budgets whose SLO is unchanged, start the others afresh."""
        slos: dict[str, _Slo] = {}
        for cfg in snapshot.slos:
            old = self._slos.get(cfg.name)
            if old is not None and old.config == cfg:
                slos[cfg.name] = old
                continue
            budget = SloBudget(cfg, sharing=self._store.shared)
            slos[cfg.name] = _Slo(cfg, budget, self._m)
            self._refresh.add(cfg.name)
            self._m.slo_objective.labels(cfg.name).set(cfg.objective)
        self._slos = slos
        by_route: dict[str, list[_Slo]] = {}
        for slo in slos.values():
            for route in slo.config.routes:
                by_route.setdefault(route, []).append(slo)
        self._by_route = {r: tuple(s) for r, s in by_route.items()}
        self._statuses = {k: v for k, v in self._statuses.items() if k in slos}
        shortest = min((s.config.seconds("5m") for s in slos.values()), default=600.0)
        self.tick_interval = min(MAX_TICK, max(MIN_TICK, shortest / 10.0))

    def shedding_routes(self, snapshot: Snapshot) -> frozenset[str]:
        """Routes of `snapshot` whose SLOs may shed: the only chains that need the shed stage."""
        return frozenset(
            r
            for cfg in snapshot.slos
            if cfg.fast_burn.shed_priority is not None
            for r in cfg.routes
        )

    # --- the request path ------------------------------------------------------------------

    def record(self, ex: Exchange, status: int, latency: float) -> None:
        """Count one finished request of a routed exchange for each SLO of its route.

        Called once, at the exchange's end: a stream that broke after its 200 is a failure.
        """
        route = ex.route
        if route is None:
            return
        slos = self._by_route.get(route.name)
        if slos is None or 400 <= status < 500:
            return  # a client's error says nothing about the service
        if ex.error_code == BudgetShed.code:
            return  # shed by the budget policy on purpose: not the service failing
        if ex.stream_outcome is Outcome.CANCELLED:
            return  # the client left mid-stream: that says nothing about the service
        broken = ex.stream_outcome is not None and ex.stream_outcome is not Outcome.SUCCESS
        failed = status >= 500 or broken
        fallback = ex.fallback is not None
        canary = route.canary
        blame = canary is not None and ex.split_backend == canary.backend
        now = self._clock.wall()
        name = route.name
        for slo in slos:
            if slo.latency:
                if failed:
                    continue  # a failure is the availability SLO's to count
                bad = latency > slo.threshold
            else:
                bad = failed or (fallback and not slo.fallback_good)
            slo.budget.record(now, bad, blame and bad)
            (slo.bad if bad else slo.good)[name].inc()

    def shed_level(self, route: str) -> int | None:
        """The priority value at and below which `route` sheds now; None when it does not."""
        return self._shed.get(route)

    # --- the loop --------------------------------------------------------------------------

    def tick(self) -> None:
        """Compute every status, publish it, decide and act (the loop calls this; tests too)."""
        now = self._clock.wall()
        for name, slo in self._slos.items():
            st = slo.budget.status(now)
            self._statuses[name] = st
            for w in st.windows:
                self._m.slo_burn_rate.labels(name, w.name).set(w.burn_rate or 0.0)
            self._m.slo_budget_remaining.labels(name).set(st.budget_remaining)
            evidence = st.fast_burn and st.short_bad >= slo.config.fast_burn.min_bad_events
            self._m.slo_fast_burn.labels(name).set(1 if evidence else 0)
        for route, slos in self._by_route.items():
            self._enforce(now, route, slos)
        for route in list(self._decisions):
            if route not in self._by_route:
                # the route lost its SLOs in a reload: undo what was done for them
                self._enforce(now, route, ())
                del self._decisions[route]
        for route, until in list(self._overrides.items()):
            if until <= now:
                del self._overrides[route]
                self._action(
                    route, "override-ended", "error-budget", "the operator's override ended"
                )

    def _enforce(self, now: float, route: str, slos: tuple[_Slo, ...]) -> None:
        pairs = [
            (self._statuses[s.config.name], s.config.fast_burn)
            for s in slos
            if s.config.name in self._statuses
        ]
        d = self._policy.decide(
            now,
            route,
            pairs,
            canary_weight=self._canary.live_weight(route),
            override_until=self._overrides.get(route),
        )
        prev = self._decisions.get(route, RouteBudgetDecision(route))
        self._decisions[route] = d
        if d.burning and not prev.burning:
            self._action(route, "fast-burn", "error-budget", d.reason)
        elif prev.burning and not d.burning:
            self._action(route, "fast-burn-over", "error-budget", "the fast burn subsided")
        if d.rollback_canary:
            done = self._canary.budget_rollback(route, d.reason)
            if done is not None:
                self._action(route, "rollback", "error-budget", str(done.get("reason", d.reason)))
        if d.freeze_canary:
            # asked every tick: an operator's resume is undone while the budget still burns
            done = self._canary.budget_hold(route, d.reason)
            if done is not None:
                self._action(route, "freeze", "error-budget", d.reason)
        else:
            why = "the fast burn subsided" if not d.overridden else "overridden by an operator"
            if self._canary.budget_release(route, why) is not None:
                self._action(route, "release", "error-budget", why)
        if d.shed_priority != prev.shed_priority:
            if d.shed_priority is None:
                self._shed.pop(route, None)
                self._action(route, "unshed", "error-budget", "shedding stopped")
            else:
                self._shed[route] = d.shed_priority
                word = _PRIORITY_WORDS.get(d.shed_priority, str(d.shed_priority))
                self._action(
                    route, "shed", "error-budget", f"shedding '{word}' and below: {d.reason}"
                )

    def _action(self, route: str, action: str, actor: str, reason: str, **extra: object) -> None:
        entry: dict[str, object] = {
            "route": route, "action": action, "reason": reason, "at": self._clock.wall(), **extra,
        }  # fmt: skip
        self._audit.record(f"slo-{action}", actor, **{k: v for k, v in entry.items() if k != "at"})
        self._m.slo_actions.labels(route, action).inc()
        self.actions = [*self.actions[-49:], entry]
        log.warning("error budget of route %s: %s: %s", route, action, reason)

    # --- operators -------------------------------------------------------------------------

    def override(self, route: str, seconds: float | None, actor: str) -> dict[str, object]:
        """Suspend enforcement on `route` for `seconds` (None ends an override now)."""
        if route not in self._by_route:
            raise RouteNotFound(f"route '{route}' has no SLO")
        now = self._clock.wall()
        if seconds is None:
            self._overrides.pop(route, None)
            self._action(route, "override-cleared", actor, "override cleared by an operator")
        else:
            if not 0 < seconds <= 7 * 86400:
                raise ClientError("an override lasts more than 0 seconds and at most 7 days")
            self._overrides[route] = now + seconds
            self._action(
                route, "override", actor, f"enforcement suspended for {seconds:g}s",
                until=now + seconds,
            )  # fmt: skip
        self.tick()
        return self.route_state(route)

    def route_state(self, route: str) -> dict[str, object]:
        d = self._decisions.get(route, RouteBudgetDecision(route))
        until = self._overrides.get(route)
        return {**d.to_dict(), "override_until": until, "slos": [
            s.config.name for s in self._by_route.get(route, ())
        ]}  # fmt: skip

    def state(self) -> dict[str, object]:
        """Every SLO's status and every route's enforcement, JSON-ready (the admin API)."""
        now = self._clock.wall()
        slos = []
        for name, slo in self._slos.items():
            st = self._statuses.get(name) or slo.budget.status(now)
            cfg = slo.config
            slos.append(
                {
                    **st.to_dict(),
                    "routes": list(cfg.routes),
                    "latency_threshold_s": cfg.latency_threshold,
                    "fallback": "good" if cfg.fallback_good else "bad",
                    "window_seconds": {w.name: cfg.seconds(w.name) for w in BURN_WINDOWS},
                }
            )
        return {
            "slos": slos,
            "routes": [self.route_state(r) for r in self._by_route],
            "actions": self.actions[-20:],
        }

    # --- replicas --------------------------------------------------------------------------

    async def share(self) -> None:
        """Write this replica's counts of changed buckets as its share; read the totals back."""
        store = self._store
        if not store.shared:
            return
        if not store.available():
            self._refresh.update(self._slos)  # read everything again once it is back
            return
        now = self._clock.wall()
        for name, slo in list(self._slos.items()):
            budget = slo.budget
            changed = budget.take_changed()
            try:
                for ring in (FINE, COARSE):
                    mine = [p for p in changed if p.ring == ring]
                    # a bucket is kept as long as the ring that reads it spans, and a little
                    ttl = budget.width(ring) * (budget.size(ring) + 2)
                    for i in range(0, len(mine), STORE_CHUNK // 3):
                        chunk = mine[i : i + STORE_CHUNK // 3]
                        items = [
                            (self._key(slo, ring, p.n, field), amount)
                            for p in chunk
                            for field, amount in (("g", p.good), ("b", p.bad), ("c", p.blame))
                        ]
                        totals = await self._store.put_counts(items, self.replica, ttl)
                        for k, p in enumerate(chunk):
                            budget.stored(p)
                            g, b, c = totals[3 * k : 3 * k + 3]
                            budget.adopt(BucketCounts(ring, p.n, g, b, c))
                buckets = (
                    budget.all_buckets(now)
                    if name in self._refresh
                    else budget.recent_buckets(now, 3 * self.tick_interval + 1.0)
                )
                done = {(p.ring, p.n) for p in changed}
                buckets = [b for b in buckets if b not in done]
                keys = [self._key(slo, r, n, f) for r, n in buckets for f in ("g", "b", "c")]
                values = await self._get(keys)
            except StoreUnavailable:
                # a share whose reply was lost may be stored or not; sending every share of
                # this round again is harmless, since each replica writes absolute counts
                budget.changed_again(changed)
                self._refresh.add(name)
                return
            for k, (ring, n) in enumerate(buckets):
                g, b, c = values[3 * k : 3 * k + 3]
                if g or b or c:
                    budget.adopt(BucketCounts(ring, n, g, b, c))
            self._refresh.discard(name)

    async def _get(self, keys: list[str]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(keys), STORE_CHUNK):
            out.extend(await self._store.sum_counts(keys[i : i + STORE_CHUNK]))
        return out

    @staticmethod
    def _key(slo: _Slo, ring: str, n: int, field: str) -> str:
        # the bucket width is part of the key: a changed window never mixes two bucketings;
        # the SLO's name is the hash tag, so one call's keys share a Redis Cluster slot
        width_us = round(slo.budget.width(ring) * 1e6)
        return f"slo:{{{slo.config.name}}}:{ring}{width_us}:{n}:{field}"

    async def step(self) -> None:
        await self.share()
        self.tick()

    def start(self) -> None:
        self._ticker.start()

    async def close(self) -> None:
        await self._ticker.close()


__all__ = ["SloController"]
