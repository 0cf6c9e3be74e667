"""Active health checks and the periodic outlier sweep.

The loops only do I/O and timing; whether an endpoint is healthy, when the
next probe is due, and who is ejected are decided by `HealthState` and
`OutlierDetector`. Each loop reads the *current* snapshot on every turn, so a
reload changes what is probed without restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from gateway.clock import Clock
from gateway.errors import AttemptFailed
from gateway.policy.compile import (
    BackendRuntime,
    EndpointState,
    HealthCheckSpec,
    Snapshot,
    model_from_path,
)
from gateway.proxy.grpc_wire import WireError, read_bool, string_field
from gateway.proxy.transports import Transports
from gateway.telemetry.catalog import Metrics
from gateway.telemetry.changes import StateChanges

log = logging.getLogger("tailguard.health")

SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


class HealthChecker:
    """One probing task per checked endpoint, started and stopped as snapshots change."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        transports: Transports,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        *,
        changes: StateChanges | None = None,
    ) -> None:
        self._changes = changes
        self._current = current
        self._transports = transports
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweepers: dict[str, asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Match the running tasks to the current snapshot; call after every swap."""
        snapshot = self._current()
        wanted = {
            s.spec.id: b.name
            for b in snapshot.backends.values()
            if b.health_check is not None
            for s in b.states
        }
        for eid in [e for e in self._tasks if e not in wanted]:
            self._tasks.pop(eid).cancel()
        for eid, backend in wanted.items():
            if eid not in self._tasks:
                self._tasks[eid] = asyncio.ensure_future(self._probe_loop(backend, eid))
        sweeping = {b.name for b in snapshot.backends.values() if b.outlier is not None}
        for name in [n for n in self._sweepers if n not in sweeping]:
            self._sweepers.pop(name).cancel()
        for name in sweeping:
            if name not in self._sweepers:
                self._sweepers[name] = asyncio.ensure_future(self._sweep_loop(name))

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._sweepers.values()]
        self._tasks.clear()
        self._sweepers.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _lookup(self, backend: str, eid: str) -> tuple[BackendRuntime, EndpointState] | None:
        b = self._current().backends.get(backend)
        if b is None or b.health_check is None:
            return None
        for s in b.states:
            if s.spec.id == eid:
                return b, s
        return None

    async def _probe_loop(self, backend_name: str, eid: str) -> None:
        while True:
            found = self._lookup(backend_name, eid)
            if found is None:
                return
            backend, state = found
            try:
                await self.probe(backend, state)
            except Exception:  # a bug here must not silently stop health checking
                log.exception("health probe of %s failed unexpectedly", eid)
            check = backend.health_check
            assert check is not None and state.health is not None
            now = self._clock.now()
            # an endpoint kept out of rotation (ejected, breaker open, suspect) has no traffic
            # for that reason; a probe is what brings it back, so keep probing it briskly
            out = backend.outlier is not None and backend.outlier.is_ejected(state.spec.id, now)
            idle = now - state.last_used > check.config.idle_interval and state.usable(now, out)
            await asyncio.sleep(state.health.next_delay(idle, self._rng.random()))

    async def probe(self, backend: BackendRuntime, state: EndpointState) -> bool:
        """Probe every path of one endpoint once and record the verdict; True when all passed."""
        check = backend.health_check
        assert check is not None and state.health is not None
        if state.spec.has_http:
            ok = await self._probe_http(backend, state, check)
        else:
            ok = await self._probe_grpc(backend, state, check)
        m = self._metrics
        url = state.spec.url
        m.health_checks.labels(backend.name, url, "pass" if ok else "fail").inc()
        if state.health.record(ok):
            verdict = "healthy" if state.health.healthy else "unhealthy"
            log.warning("endpoint %s of %s is now %s", url, backend.name, verdict)
            if self._changes is not None:
                self._changes.record(
                    "health", f"{url} ({backend.name}, {state.spec.region}) is now {verdict}",
                    backend=backend.name, endpoint=url, region=state.spec.region, state=verdict,
                )  # fmt: skip
        m.endpoint_healthy.labels(backend.name, url).set(1 if state.health.healthy else 0)
        if ok and backend.outlier is not None:
            now = self._clock.now()
            if backend.outlier.is_ejected(state.spec.id, now):
                backend.outlier.uneject(state.spec.id, now)
                log.info(
                    "endpoint %s of %s un-ejected by a passing health check", url, backend.name
                )
                if self._changes is not None:
                    self._changes.record(
                        "ejection", f"{url} ({backend.name}) un-ejected by a passing health check",
                        backend=backend.name, endpoint=url, region=state.spec.region,
                        state="unejected",
                    )  # fmt: skip
                m.ejected.labels(backend.name).set(len(backend.outlier.ejected(now)))
        return ok

    async def _probe_http(
        self, backend: BackendRuntime, state: EndpointState, check: HealthCheckSpec
    ) -> bool:
        transport = self._transports.get(state.spec, backend.pool, backend.protocol)
        for path in check.paths:
            try:
                # a failed probe closes its connection: the next one tests a fresh one
                status = await transport.get_status(path, check.config.timeout, check.expect)
            except AttemptFailed:
                return False
            if status not in check.expect:
                return False
        return True

    async def _probe_grpc(
        self, backend: BackendRuntime, state: EndpointState, check: HealthCheckSpec
    ) -> bool:
        """The same checks over gRPC for an endpoint that has only a gRPC address.

        `/v2/health/ready` is `ServerReady`, `/v2/models/<m>/ready` is `ModelReady`; any other
        probe path (which only an HTTP server could answer) is taken as `ServerReady`.
        """
        transport = self._transports.grpc(state.spec, backend.pool)
        for path in check.paths:
            model = model_from_path(path)
            if model is not None and path.endswith("/ready"):
                method, body = MODEL_READY, string_field(1, model)
            else:
                method, body = SERVER_READY, b""
            try:
                reply = await transport.probe(method, body, check.config.timeout)
                if not read_bool(reply):
                    return False
            except AttemptFailed:
                return False
            except WireError:
                return False
        return True

    async def _sweep_loop(self, backend_name: str) -> None:
        while True:
            backend = self._current().backends.get(backend_name)
            if backend is None or backend.outlier is None:
                return
            await asyncio.sleep(backend.outlier.config.interval)
            backend = self._current().backends.get(backend_name)
            if backend is None or backend.outlier is None:
                return
            now = self._clock.now()
            for ejection in backend.outlier.sweep(now):
                reason = ejection.reason.value
                self._metrics.outliers_detected.labels(backend_name, reason).inc()
                self._metrics.ejections.labels(backend_name, reason).inc()
                log.warning(
                    "ejected %s (%s) until +%.0fs", ejection.endpoint, reason, ejection.until - now
                )
                if self._changes is not None:
                    spec = next(
                        (s.spec for s in backend.states if s.spec.id == ejection.endpoint), None
                    )
                    url = spec.url if spec is not None else ejection.endpoint
                    self._changes.record(
                        "ejection",
                        f"{url} ({backend_name}) ejected for {ejection.until - now:.0f}s "
                        f"({reason.replace('_', ' ')})",
                        backend=backend_name, endpoint=url, state="ejected", reason=reason,
                        region=spec.region if spec is not None else None,
                    )  # fmt: skip
            self._metrics.ejected.labels(backend_name).set(len(backend.outlier.ejected(now)))
