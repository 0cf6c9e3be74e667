"""Blue/green at the gateway: send all of a route's traffic to one backend, and back.

`tailguard ctl route switch ROUTE --to BACKEND` makes every request of ROUTE go to BACKEND
(the policy's split, canary and sticky hashing are set aside, not changed); `--back`
returns the route to its split. A switch is runtime state like a drain or a canary's
weight: it survives policy reloads that keep the route and the backend, and it is shared.
With a shared state store the replica that was asked publishes the switch (a sequence and
its own id: the newest wins, however the replicas' clocks disagree) and every replica
adopts it on its next tick, so all follow within a fraction of a second. Without one, a
switch holds on the replica that was asked only. Every switch goes to the audit log.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable

from gateway.clock import Clock
from gateway.control.tasks import BackgroundTasks, Ticker
from gateway.errors import ClientError, RouteNotFound, StoreUnavailable
from gateway.policy.compile import RouteRuntime, Snapshot
from gateway.state.store import StateStore
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.catalog import Metrics

log = logging.getLogger("tailguard.switch")

TICK = 0.25
# A switch stays published this long (a year): it is an operator's standing decision.
KEEP_FOR = 365 * 86400.0


def _key(route: str) -> str:
    return f"switch:{route}"


class RouteSwitches:
    """Which routes are switched wholly to one backend; applies and shares the switches."""

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
        self._targets: dict[str, str] = {}
        # (sequence, replica) of the switch state each route stands at; newer wins
        self._versions: dict[str, tuple[int, str]] = {}
        self._pending = BackgroundTasks()
        self._ticker = Ticker(self.step, lambda: TICK, log, "route switch tick")

    # --- applying ------------------------------------------------------------------------

    def sync(self, snapshot: Snapshot) -> None:
        """Apply the switches to a new snapshot; one whose route or backend left is dropped."""
        routes = {r.name: r for r in snapshot.routes}
        for name, backend in list(self._targets.items()):
            route = routes.get(name)
            if route is None or self._refusal(snapshot, route, backend) is not None:
                log.warning(
                    "switch of route %s to %s dropped: not in the policy now", name, backend
                )
                del self._targets[name]
                self._m.route_switched.remove(name, backend)
        for route in snapshot.routes:
            route.switched_to = self._targets.get(route.name)

    @staticmethod
    def _refusal(snapshot: Snapshot, route: RouteRuntime, backend: str) -> str | None:
        target = snapshot.backends.get(backend)
        if target is None:
            return f"backend '{backend}' is not defined in the policy"
        protocols = {snapshot.backends[b].protocol for b in route.split.backends}
        if protocols and target.protocol not in protocols:
            return (
                f"backend '{backend}' speaks {target.protocol}, route '{route.name}' "
                f"{'/'.join(sorted(protocols))}"
            )
        return None

    def _set(self, route: RouteRuntime, backend: str | None) -> str | None:
        previous = self._targets.pop(route.name, None)
        if previous is not None:
            self._m.route_switched.remove(route.name, previous)
        if backend is not None:
            self._targets[route.name] = backend
            self._m.route_switched.labels(route.name, backend).set(1)
        route.switched_to = backend
        return previous

    # --- operators -----------------------------------------------------------------------

    def switch(self, route_name: str, backend: str | None, actor: str) -> dict[str, object]:
        """Send all of the route's traffic to `backend`, or (None) back to its split."""
        snapshot = self._current()
        route = next((r for r in snapshot.routes if r.name == route_name), None)
        if route is None:
            raise RouteNotFound(f"no route named '{route_name}'")
        if backend is not None:
            refusal = self._refusal(snapshot, route, backend)
            if refusal is not None:
                raise ClientError(refusal)
        previous = self._set(route, backend)
        seq = self._versions.get(route_name, (0, ""))[0] + 1
        self._versions[route_name] = (seq, self._replica)
        entry = self._audit.record(
            "route-switch", actor, route=route_name, to=backend, previous=previous, seq=seq
        )
        log.warning(
            "route %s %s by %s",
            route_name,
            f"switched to backend {backend}" if backend else "back to its split",
            actor,
        )
        self._publish(route_name, backend, seq)
        return {"route": route_name, "to": backend, "previous": previous, "time": entry["time"]}

    def state(self) -> dict[str, str]:
        return dict(self._targets)

    # --- replicas ------------------------------------------------------------------------

    def _publish(self, route: str, backend: str | None, seq: int) -> None:
        if not self._store.shared:
            return
        payload = json.dumps({"seq": seq, "by": self._replica, "to": backend}).encode()
        self._pending.spawn(self._put(_key(route), payload))

    async def _put(self, key: str, value: bytes) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._store.set(key, value, ttl=KEEP_FOR)

    def _follow(self, route: RouteRuntime, raw: bytes) -> None:
        try:
            data = json.loads(raw)
            version = (data["seq"], str(data["by"]))
            backend = data["to"]
            if not isinstance(version[0], int) or not (backend is None or isinstance(backend, str)):
                return
        except (ValueError, TypeError, KeyError, RecursionError):
            log.warning("ignoring an unreadable switch state for %s", route.name)
            return
        if version <= self._versions.get(route.name, (0, "")):
            return
        self._versions[route.name] = version
        if backend is not None:
            refusal = self._refusal(self._current(), route, backend)
            if refusal is not None:
                log.warning("not following the switch of %s: %s", route.name, refusal)
                return
        if self._targets.get(route.name) == backend:
            return
        previous = self._set(route, backend)
        self._audit.record(
            "route-switch-followed", version[1], route=route.name, to=backend,
            previous=previous, seq=version[0],
        )  # fmt: skip
        log.warning(
            "route %s follows replica %s: %s",
            route.name,
            version[1],
            f"switched to backend {backend}" if backend else "back to its split",
        )

    async def step(self) -> None:
        """One tick: adopt any newer switch another replica published."""
        if not self._store.shared or not self._store.available():
            return
        for route in self._current().routes:
            try:
                raw = await self._store.get(_key(route.name))
            except StoreUnavailable:
                return
            if raw is not None:
                self._follow(route, raw)

    def start(self) -> None:
        if self._store.shared:
            self._ticker.start()

    async def close(self) -> None:
        await self._ticker.close()
        await self._pending.drain()


__all__ = ["RouteSwitches"]
