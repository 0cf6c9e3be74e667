"""Canary rollouts in motion: record outcomes, judge on a timer, move the split, tell everyone.

The decisions are `gateway.resilience.canary.CanaryAnalysis`; this loop feeds it each
request's outcome on the canary's routes, asks it to judge when an interval ends, and
applies the weight it decides to the route's split (and to every later snapshot, so a
reload keeps the rollout where it was). Every step and verdict goes to the audit log and
to the metrics before it takes effect.

With a shared store, replicas agree: one holds a short lease per route and decides; it
publishes the analysis state after each decision, and the others restore it on their next
tick. A replica that loses the lease simply follows; when the leader dies its lease runs
out and a follower takes over where the shared state left off. An operator's action on
any replica is published the same way, and every replica (the leader too) adopts the
newest published state, so a rollback asked of a follower is not undone by the leader.
Published times are wall-clock: monotonic clocks of two hosts have nothing in common.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence

from gateway.clock import Clock
from gateway.control.tasks import BackgroundTasks, Ticker
from gateway.errors import ClientError, RouteNotFound, StoreUnavailable
from gateway.policy.compile import RouteRuntime, Snapshot
from gateway.resilience.canary import (
    CanaryAnalysis,
    CanaryDecision,
    CanaryPhase,
    CanarySide,
    Verdict,
)
from gateway.state.store import StateStore
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.catalog import Metrics
from gateway.telemetry.changes import StateChanges

log = logging.getLogger("tailguard.canary")

TICK = 0.25


class CanaryController:
    """Owns one `CanaryAnalysis` per route that has a `canary:` section."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        metrics: Metrics,
        clock: Clock,
        audit: AuditLog,
        store: StateStore,
        replica: str,
    ) -> None:
        self._current = current
        self._m = metrics
        self._clock = clock
        self._audit = audit
        self._store = store
        self._replica = replica
        self._analyses: dict[str, CanaryAnalysis] = {}
        # (sequence, replica) of the shared state each analysis stands for; newer wins
        self._versions: dict[str, tuple[int, str]] = {}
        self._pending = BackgroundTasks()
        self._ticker = Ticker(self.step, lambda: TICK, log, "canary analysis tick")
        self.decisions: list[dict[str, object]] = []  # recent, for the admin API
        self._held: set[str] = set()  # routes whose rollout the error-budget policy paused
        # per route, the analysis's latest verdict (pass, fail, wait) with its reason and wall
        # time; shared with the replicas that follow
        self._last: dict[str, dict[str, object]] = {}
        # recent state changes (the status page); set by the composition root
        self.changes: StateChanges | None = None

    # --- snapshot ------------------------------------------------------------------------

    def sync(self, snapshot: Snapshot) -> None:
        """Adopt a new snapshot: keep rollouts whose config is unchanged, apply their weights."""
        now = self._clock.now()
        seen = set()
        for route in snapshot.routes:
            spec = route.canary
            if spec is None:
                continue
            seen.add(route.name)
            analysis = self._analyses.get(route.name)
            if analysis is None or analysis.config != spec.config:
                analysis = self._analyses[route.name] = CanaryAnalysis(spec.config, now)
                self._audit.record(
                    "canary-started", "policy", route=route.name, backend=spec.backend,
                    weight=analysis.weight, steps=list(spec.config.steps),
                )  # fmt: skip
            self._apply(route, analysis)
        for name in list(self._analyses):
            if name not in seen:
                del self._analyses[name]

    def _apply(self, route: RouteRuntime, analysis: CanaryAnalysis) -> None:
        assert route.canary is not None
        route.set_canary_weight(analysis.weight)
        self._m.canary_weight.labels(route.name, route.canary.backend).set(analysis.weight)

    # --- the request path ----------------------------------------------------------------

    def record(self, route: RouteRuntime, backend: str, failed: bool, latency: float) -> None:
        """One finished request of a canary route (client errors are not passed in)."""
        analysis = self._analyses.get(route.name)
        if analysis is None or route.canary is None:
            return
        side = CanarySide.CANARY if backend == route.canary.backend else CanarySide.BASELINE
        analysis.record(side, failed, latency, self._clock.now())

    def record_output(self, route: RouteRuntime, backend: str, labels: Sequence[str]) -> None:
        """Output labels of one sampled answer, for the output gate (the quality worker calls).

        Only the canary and the route's split backends count: an answer from a fallback
        backend says nothing about either side.
        """
        spec = route.canary
        analysis = self._analyses.get(route.name)
        if analysis is None or spec is None or spec.config.max_output_drift is None:
            return
        if backend == spec.backend:
            side = CanarySide.CANARY
        elif any(e.backend == backend for e in route.split_entries):
            side = CanarySide.BASELINE
        else:
            return
        analysis.record_output(side, labels, self._clock.now())

    # --- decisions -----------------------------------------------------------------------

    def analysis(self, route: str) -> CanaryAnalysis | None:
        return self._analyses.get(route)

    def state(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, a in self._analyses.items():
            canary, baseline = a.interval_stats()
            out[name] = {
                "phase": a.phase.value,
                "weight": a.weight,
                "step": a.step,
                "failed_checks": a.failed_checks,
                "interval": {"canary": canary.to_dict(), "baseline": baseline.to_dict()},
                "last_verdict": self._last.get(name),
            }
        return out

    def act(self, route_name: str, action: str, actor: str) -> dict[str, object]:
        """An operator's promote | pause | resume | rollback; returns the decision."""
        snapshot = self._current()
        route = next((r for r in snapshot.routes if r.name == route_name), None)
        analysis = self._analyses.get(route_name)
        if route is None or analysis is None:
            raise RouteNotFound(f"route '{route_name}' has no canary")
        now = self._clock.now()
        if action == "promote":
            decision = analysis.promote(now)
        elif action == "pause":
            decision = analysis.pause(now)
        elif action == "resume":
            decision = analysis.resume(now)
        elif action == "rollback":
            decision = analysis.rollback(now, f"rolled back by {actor}")
        else:
            raise ClientError(f"unknown canary action '{action}'")
        return self._decided(route, analysis, decision, actor)

    def _decided(
        self, route: RouteRuntime, analysis: CanaryAnalysis, decision: CanaryDecision, actor: str
    ) -> dict[str, object]:
        entry = {"route": route.name, **decision.to_dict()}
        self._audit.record("canary-decision", actor, **entry)
        self._m.canary_verdicts.labels(route.name, decision.action.value).inc()
        self._apply(route, analysis)
        self.decisions = [*self.decisions[-49:], entry]
        if decision.verdict is not None:
            # `at` is the gateway's monotonic clock; `time` is what a person (or a replica)
            # can read
            self._last[route.name] = {
                "verdict": decision.verdict.value,
                "action": decision.action.value,
                "reason": decision.reason,
                "time": self._clock.wall() - self._clock.now() + decision.at,
            }
        moved = decision.weight_before != decision.weight_after
        if moved:
            log.warning("canary of %s: %s", route.name, decision.reason)
        if self.changes is not None and (moved or decision.verdict is not Verdict.WAIT):
            self.changes.record(
                "canary", f"canary of {route.name}: {decision.action.value}: {decision.reason}",
                route=route.name, action=decision.action.value,
                weight=decision.weight_after, phase=decision.phase.value,
            )  # fmt: skip
        self._share(route.name, analysis)
        return entry

    def tick(self) -> None:
        """Judge every rollout whose interval has ended (the loop calls this; so can tests)."""
        snapshot = self._current()
        now = self._clock.now()
        for route in snapshot.routes:
            analysis = self._analyses.get(route.name)
            if analysis is not None and analysis.due(now):
                self._decided(route, analysis, analysis.evaluate(now), "canary-analysis")

    # --- the error-budget policy ----------------------------------------------------------

    BUDGET_ACTOR = "error-budget"

    def _budget_target(self, route_name: str) -> tuple[RouteRuntime, CanaryAnalysis] | None:
        route = next((r for r in self._current().routes if r.name == route_name), None)
        analysis = self._analyses.get(route_name)
        if route is None or analysis is None or route.canary is None:
            return None
        return route, analysis

    def budget_hold(self, route_name: str, why: str) -> dict[str, object] | None:
        """Freeze a progressing rollout where it is (an operator's resume is undone at the
        next tick while the budget still burns); the decision, or None when nothing changed."""
        target = self._budget_target(route_name)
        if target is None or target[1].phase is not CanaryPhase.PROGRESSING:
            return None
        route, analysis = target
        self._held.add(route_name)
        decision = analysis.pause(self._clock.now(), by=self.BUDGET_ACTOR, why=why)
        return self._decided(route, analysis, decision, self.BUDGET_ACTOR)

    def budget_release(self, route_name: str, why: str) -> dict[str, object] | None:
        """Resume a rollout this policy froze (never one an operator paused)."""
        if route_name not in self._held:
            return None
        self._held.discard(route_name)
        target = self._budget_target(route_name)
        if target is None or target[1].phase is not CanaryPhase.PAUSED:
            return None
        route, analysis = target
        decision = analysis.resume(self._clock.now(), by=self.BUDGET_ACTOR, why=why)
        return self._decided(route, analysis, decision, self.BUDGET_ACTOR)

    def budget_rollback(self, route_name: str, why: str) -> dict[str, object] | None:
        """Take the traffic off a canary that causes the burn."""
        target = self._budget_target(route_name)
        if target is None or target[1].phase.is_terminal:
            return None
        route, analysis = target
        self._held.discard(route_name)
        decision = analysis.rollback(self._clock.now(), why, by=self.BUDGET_ACTOR)
        return self._decided(route, analysis, decision, self.BUDGET_ACTOR)

    def live_weight(self, route_name: str) -> float | None:
        """The canary's weight while its rollout is not finished; None otherwise."""
        analysis = self._analyses.get(route_name)
        if analysis is None or analysis.phase.is_terminal:
            return None
        return analysis.weight

    # --- replicas ------------------------------------------------------------------------

    def _share(self, route: str, analysis: CanaryAnalysis) -> None:
        if not self._store.shared:
            return
        seq = self._versions.get(route, (0, ""))[0] + 1
        self._versions[route] = (seq, self._replica)
        state = analysis.export()
        # the interval's start as wall time: another host's monotonic clock cannot read ours
        start = state["interval_start"]
        assert isinstance(start, float)
        state["interval_start"] = start - self._clock.now() + self._clock.wall()
        payload = {"by": self._replica, "seq": seq, "clock": "wall", **state}
        if route in self._last:
            payload["last_verdict"] = self._last[route]
        self._pending.spawn(self._put(f"canary:{route}", json.dumps(payload).encode()))

    async def _put(self, key: str, value: bytes) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._store.set(key, value, ttl=86400)

    async def _leads(self, route: RouteRuntime) -> bool:
        """True when this replica holds (or just took) the route's decider lease."""
        assert route.canary is not None
        if not self._store.shared or not self._store.available():
            return True  # alone, or cut off: decide locally rather than freeze the rollout
        key = f"canary-lead:{route.name}"
        ttl = max(2.0, route.canary.config.interval * 2)
        try:
            # atomic take-or-extend: two replicas never both believe they lead
            return await self._store.hold_lease(key, self._replica.encode(), ttl)
        except StoreUnavailable:
            return True

    async def _adopt_shared(self, route: RouteRuntime) -> None:
        """Take the published state when it is newer than ours, whoever published it."""
        if not self._store.shared or not self._store.available():
            return
        try:
            raw = await self._store.get(f"canary:{route.name}")
        except StoreUnavailable:
            return
        if raw is not None:
            self._follow(route, raw)

    def _follow(self, route: RouteRuntime, raw: bytes) -> None:
        assert route.canary is not None
        try:
            data = json.loads(raw)
            version = (data["seq"], str(data["by"]))
            if not isinstance(version[0], int) or data.get("clock") != "wall":
                return  # not a state this controller published
            own = self._versions.get(route.name, (0, ""))
            if version == own or version[0] < own[0]:
                return
            start = data["interval_start"]
            if isinstance(start, int | float) and not isinstance(start, bool):
                data["interval_start"] = start - self._clock.wall() + self._clock.now()
            restored = CanaryAnalysis.restore(route.canary.config, data)
        except (ValueError, TypeError, KeyError, RecursionError):
            log.warning("ignoring an unreadable canary state for %s", route.name)
            return
        current = self._analyses.get(route.name)
        self._versions[route.name] = version
        last = data.get("last_verdict")
        if isinstance(last, dict) and isinstance(last.get("verdict"), str):
            self._last[route.name] = {
                k: last.get(k) for k in ("verdict", "action", "reason", "time")
            }
        self._analyses[route.name] = restored
        self._apply(route, restored)
        if current is None or (current.phase, current.weight) != (restored.phase, restored.weight):
            self._audit.record(
                "canary-followed", version[1], route=route.name, backend=route.canary.backend,
                phase=restored.phase.value, weight=restored.weight, step=restored.step,
            )  # fmt: skip
            log.warning(
                "canary of %s follows replica %s: %s at %g%%",
                route.name, version[1], restored.phase.value, restored.weight,
            )  # fmt: skip

    async def step(self) -> None:
        """One tick across replicas: hold or seek the lease, adopt newer state, judge if due."""
        for route in self._current().routes:
            if route.canary is None or route.name not in self._analyses:
                continue
            leads = await self._leads(route)
            await self._adopt_shared(route)
            analysis = self._analyses.get(route.name)  # a reload may have dropped it meanwhile
            now = self._clock.now()
            if leads and analysis is not None and analysis.due(now):
                self._decided(route, analysis, analysis.evaluate(now), "canary-analysis")

    def start(self) -> None:
        self._ticker.start()

    async def close(self) -> None:
        await self._ticker.close()
        await self._pending.drain()


__all__ = ["CanaryController"]
