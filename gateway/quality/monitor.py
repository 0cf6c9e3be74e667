"""The quality worker: profiles sampled exchanges, scores drift, starts shadows, feeds canaries.

It empties the tap's queue every `TICK` on the event loop, in batches of `BATCH` with a
yield between batches, so a burst never holds the loop for long; everything it does is
off the request path (the answers were sent). Per route and answering backend it keeps
a sliding `ProfileWindow` (the current profile) and, once captured or loaded, a
reference profile; every `SCORE_EVERY` it scores each reference against the current
window (`gateway.quality.drift`) and exports the scores as `tailguard_drift_score`.

References: captured on demand from live traffic (at once from the current window, or
over the next `for` seconds), or loaded from a file through the admin API. With a shared
state store, each new reference is published (serialised sketches) and every replica
adopts the newest one on its next sync, so replicas judge against the same reference.

The worker's own CPU time is measured (thread CPU around each batch) and exported as
`tailguard_quality_worker_cpu_seconds_total`, so its cost is visible in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.clock import Clock
from gateway.control.tasks import BackgroundTasks, Ticker
from gateway.errors import ClientError, RouteNotFound, StoreUnavailable
from gateway.quality.config import WINDOW_SLICES
from gateway.quality.drift import DriftScore, DriftStat, compare
from gateway.quality.features import Features, decode_body, extract
from gateway.quality.shadow import ShadowSender
from gateway.quality.sketch import Profile
from gateway.quality.tap import Observed, QualityTap
from gateway.quality.window import ProfileWindow
from gateway.state.store import StateStore
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.catalog import QUALITY_PROBLEMS, Metrics

if TYPE_CHECKING:
    import random

    from gateway.control.canary import CanaryController
    from gateway.policy.compile import RouteRuntime, Snapshot
    from gateway.proxy.transports import Transports

log = logging.getLogger("tailguard.quality")

TICK = 0.05
BATCH = 256
SCORE_EVERY = 1.0
SYNC_EVERY = 2.0
REFERENCE_TTL = 30 * 86400.0
MAX_CAPTURE = 7 * 86400.0

Key = tuple[str, str]  # (route, backend)


@dataclass(slots=True)
class Reference:
    """A reference profile and where it came from (`at` is wall time, for replicas)."""

    profile: Profile
    source: str  # capture | load | store
    at: float
    by: str

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "at": self.at,
            "by": self.by,
            "exchanges": self.profile.exchanges,
            "features": len(self.profile.sketches),
        }


@dataclass(slots=True)
class Capture:
    """A reference being recorded from live traffic until `until` (monotonic time)."""

    until: float
    profile: Profile
    actor: str


def bodies(item: Observed) -> tuple[bytes, bytes | None]:
    """The request and answer bodies as the model saw and said them (codings undone).

    A body whose coding cannot be undone (unknown, corrupt, a bomb) reads as empty, so
    it is counted as unreadable rather than profiled as garbage.
    """
    request = decode_body(item.request.headers.get("content-encoding"), item.request.body)
    answer = item.answer
    response = None
    if answer is not None and answer.body is not None and answer.stream is None:
        response = decode_body(answer.headers.get("content-encoding"), answer.body)
    return request, response


class QualityMonitor:
    """Owns the tap, the profiles, the references, the scores and the shadow sender."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        store: StateStore,
        transports: Transports,
        audit: AuditLog,
        replica: str,
        canary: CanaryController | None = None,
        queue: int = 1024,
    ) -> None:
        self._current = current
        self._m = metrics
        self._clock = clock
        self._store = store
        self._audit = audit
        self._replica = replica
        self._canary = canary
        self.tap = QualityTap(queue, rng.random, metrics)
        self.shadow = ShadowSender(current, transports, metrics, clock)
        self._windows: dict[Key, ProfileWindow] = {}
        self._window_len: dict[str, float] = {}
        self._references: dict[Key, Reference] = {}
        self._captures: dict[Key, Capture] = {}
        self._scores: dict[Key, list[DriftScore]] = {}
        self._exported: dict[Key, set[tuple[str, str]]] = {}
        self._pending = BackgroundTasks()
        self._ticker = Ticker(self.step, lambda: TICK, log, "quality worker turn")
        self._next_score = 0.0
        self._next_sync = 0.0
        self.processed = 0
        self.cpu_seconds = 0.0

    # --- snapshot --------------------------------------------------------------------------

    def sync(self, snapshot: Snapshot) -> None:
        """Adopt a new snapshot: resize the queue, drop what routes no longer profile."""
        self.tap.resize(snapshot.settings.quality_queue)
        wanted: dict[str, float] = {}
        for r in snapshot.routes:
            if r.quality is not None:
                wanted[r.name] = r.quality.window
                for stat in DriftStat:
                    self._m.drift_threshold.labels(r.name, stat.value).set(
                        r.quality.thresholds.of(stat)
                    )
        for key in list(self._windows):
            if wanted.get(key[0]) != self._window_len.get(key[0]):
                del self._windows[key]  # gone, or a new window length: start afresh
        for key in list(self._references):
            if key[0] not in wanted:
                del self._references[key]
                self._captures.pop(key, None)
                self._unexport(key)
        self._window_len = wanted

    # --- the worker ------------------------------------------------------------------------

    def drain(self, now: float) -> int:
        """Process every queued exchange (the loop calls this; so can tests). Returns the count."""
        done = 0
        while True:
            batch = self.tap.take(BATCH)
            if not batch:
                break
            self._process(batch, now)
            done += len(batch)
        return done

    def _process(self, batch: list[Observed], now: float) -> None:
        started = time.thread_time()
        snapshot = self._current()
        m = self._m
        for item in batch:
            route = item.route
            b = snapshot.backends.get(item.backend)
            if b is None:
                continue
            request, response = bodies(item)
            features = extract(b.protocol, request, response)
            if features.problem is not None:
                problem = features.problem if features.problem in QUALITY_PROBLEMS else "other"
                m.child(m.quality_problems, route.name, problem).inc()
            if item.sampled:
                self._profile(route, item.backend, features, now)
            if item.shadowed and response is not None:
                self.shadow.launch(route, item.request, features, item.latency)
        self.processed += len(batch)
        spent = time.thread_time() - started
        self.cpu_seconds += spent
        m.quality_worker_cpu.inc(spent)

    def _profile(self, route: RouteRuntime, backend: str, features: Features, now: float) -> None:
        quality = route.quality
        assert quality is not None
        key = (route.name, backend)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = ProfileWindow(quality.window, WINDOW_SLICES)
            self._window_len[route.name] = quality.window
        window.add(features, now)
        capture = self._captures.get(key)
        if capture is not None and now < capture.until:
            capture.profile.add(features)
        self._m.child(self._m.quality_sampled, route.name, backend).inc()
        canary = self._canary
        spec = route.canary
        if canary is not None and spec is not None and spec.config.max_output_drift is not None:
            name = spec.config.output_feature or features.primary
            labels = features.categorical.get(name) if name is not None else None
            if labels:
                canary.record_output(route, backend, labels)

    def score(self, now: float) -> None:
        """Finish due captures, then score every reference against its current window."""
        started = time.thread_time()
        for key, capture in list(self._captures.items()):
            if now >= capture.until:
                del self._captures[key]
                if capture.profile.exchanges == 0:
                    log.warning("capture of %s/%s saw no traffic; no reference", *key)
                    continue
                self._adopt(key, capture.profile, "capture", capture.actor)
        routes = {r.name: r for r in self._current().routes if r.quality is not None}
        for key, ref in self._references.items():
            route = routes.get(key[0])
            if route is None or route.quality is None:
                continue
            window = self._windows.get(key)
            current = window.profile(now) if window is not None else Profile()
            scores = compare(ref.profile, current, route.quality.thresholds)
            self._scores[key] = scores
            self._export(key, scores)
        spent = time.thread_time() - started
        self.cpu_seconds += spent
        self._m.quality_worker_cpu.inc(spent)

    def _export(self, key: Key, scores: list[DriftScore]) -> None:
        gauge = self._m.drift_score
        live = set()
        for s in scores:
            if s.value is None:
                continue
            live.add((s.feature, s.stat.value))
            gauge.labels(key[0], key[1], s.feature, s.stat.value).set(s.value)
        for feature, stat in self._exported.get(key, set()) - live:
            with contextlib.suppress(KeyError):
                gauge.remove(key[0], key[1], feature, stat)
        self._exported[key] = live
        drifted = len({s.feature for s in scores if s.drifted})
        self._m.drift_features.labels(*key).set(drifted)

    def _unexport(self, key: Key) -> None:
        self._export(key, [])
        with contextlib.suppress(KeyError):
            self._m.drift_features.remove(*key)
        self._scores.pop(key, None)

    # --- references ------------------------------------------------------------------------

    def _route(self, name: str) -> RouteRuntime:
        route = next((r for r in self._current().routes if r.name == name), None)
        if route is None:
            raise RouteNotFound(f"no route named '{name}'")
        if route.quality is None:
            raise ClientError(f"route '{name}' has no quality section: nothing is profiled")
        return route

    def _backends(self, route: RouteRuntime, backend: str | None) -> list[str]:
        names = [e.backend for e in route.split_entries]
        if backend is None:
            return names
        if backend not in names:
            raise ClientError(
                f"backend '{backend}' does not serve route '{route.name}' "
                f"(its backends: {', '.join(names)})"
            )
        return [backend]

    def capture(
        self, route_name: str, backend: str | None, duration: float | None, actor: str
    ) -> dict[str, Any]:
        """Take a reference: the current window now (`duration` None) or the next `duration` s.

        `backend` None captures every backend of the route's split. Raises ClientError when
        there is nothing to take (no traffic profiled yet) or the duration is out of range.
        """
        route = self._route(route_name)
        now = self._clock.now()
        names = self._backends(route, backend)
        out: dict[str, Any] = {"route": route_name, "backends": {}}
        if duration is not None:
            if not 0 < duration <= MAX_CAPTURE:
                raise ClientError(f"a capture lasts between 0 and {MAX_CAPTURE:g} s")
            for name in names:
                self._captures[(route_name, name)] = Capture(now + duration, Profile(), actor)
                out["backends"][name] = {"capturing_for_s": duration}
            self._audit.record(
                "quality-capture-started", actor, route=route_name, backends=names,
                duration=duration,
            )  # fmt: skip
            return out
        taken = 0
        for name in names:
            window = self._windows.get((route_name, name))
            profile = window.profile(now) if window is not None else Profile()
            if profile.exchanges == 0:
                out["backends"][name] = {"skipped": "no profiled traffic in the current window"}
                continue
            ref = self._adopt((route_name, name), profile, "capture", actor)
            out["backends"][name] = ref.to_dict()
            taken += 1
        if not taken:
            raise ClientError(
                f"route '{route_name}' has no profiled traffic yet: send traffic, or capture "
                "over a duration (for)"
            )
        return out

    def load(self, route_name: str, backend: str, raw: bytes, actor: str) -> dict[str, Any]:
        """Adopt a reference profile from its serialised form (a file an operator keeps)."""
        route = self._route(route_name)
        self._backends(route, backend)
        try:
            profile = Profile.from_bytes(raw)
        except ValueError as e:
            raise ClientError(f"not a reference profile: {e}") from None
        return self._adopt((route_name, backend), profile, "load", actor).to_dict()

    def export(self, route_name: str, backend: str) -> bytes:
        """The reference of a route and backend, serialised (what `load` takes back)."""
        self._route(route_name)
        ref = self._references.get((route_name, backend))
        if ref is None:
            raise RouteNotFound(f"route '{route_name}' has no reference for backend '{backend}'")
        return ref.profile.to_bytes()

    def clear(self, route_name: str, backend: str | None, actor: str) -> dict[str, Any]:
        """Forget references (and captures) of a route; scores disappear with them."""
        route = self._route(route_name)
        names = self._backends(route, backend)
        for name in names:
            key = (route_name, name)
            self._references.pop(key, None)
            self._captures.pop(key, None)
            self._unexport(key)
        self._audit.record("quality-reference-cleared", actor, route=route_name, backends=names)
        return {"route": route_name, "cleared": names}

    def _adopt(self, key: Key, profile: Profile, source: str, actor: str) -> Reference:
        ref = Reference(profile, source, self._clock.wall(), self._replica)
        self._references[key] = ref
        self._m.quality_references.labels(key[0], key[1], source).inc()
        self._audit.record(
            "quality-reference", actor, route=key[0], backend=key[1], source=source,
            exchanges=profile.exchanges,
        )  # fmt: skip
        self._publish(key, ref)
        return ref

    # --- replicas --------------------------------------------------------------------------

    def _publish(self, key: Key, ref: Reference) -> None:
        if not self._store.shared:
            return
        payload = json.dumps(
            {"by": ref.by, "at": ref.at, "source": ref.source, "profile": ref.profile.to_json()},
            separators=(",", ":"),
        ).encode()
        self._pending.spawn(self._put(f"quality-ref:{key[0]}:{key[1]}", payload))

    async def _put(self, key: str, value: bytes) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._store.set(key, value, ttl=REFERENCE_TTL)

    async def sync_store(self) -> None:
        """Adopt references other replicas published that are newer than ours."""
        store = self._store
        if not store.shared or not store.available():
            return
        for route in self._current().routes:
            if route.quality is None:
                continue
            for backend in {e.backend for e in route.split_entries}:
                key = (route.name, backend)
                try:
                    raw = await store.get(f"quality-ref:{route.name}:{backend}")
                except StoreUnavailable:
                    return
                if raw is not None:
                    self._follow(key, raw)

    def _follow(self, key: Key, raw: bytes) -> None:
        try:
            data = json.loads(raw)
            at, by = float(data["at"]), str(data["by"])
            own = self._references.get(key)
            if own is not None and (own.at, own.by) >= (at, by):
                return
            profile = Profile.from_json(data["profile"])
        except (ValueError, TypeError, KeyError, RecursionError):
            log.warning("ignoring an unreadable shared reference for %s/%s", *key)
            return
        self._references[key] = Reference(profile, "store", at, by)
        self._m.quality_references.labels(key[0], key[1], "store").inc()
        log.info("reference of %s/%s adopted from replica %s", key[0], key[1], by)

    # --- views -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Per route: sampling, references, captures, the latest scores, shadow tallies."""
        now = self._clock.now()
        routes: dict[str, Any] = {}
        for r in self._current().routes:
            if r.quality is None and r.shadow is None:
                continue
            entry: dict[str, Any] = {}
            if r.quality is not None:
                backends: dict[str, Any] = {}
                for name in dict.fromkeys(e.backend for e in r.split_entries):
                    key = (r.name, name)
                    window = self._windows.get(key)
                    ref = self._references.get(key)
                    capture = self._captures.get(key)
                    scores = self._scores.get(key, []) if ref is not None else []
                    backends[name] = {
                        "window_exchanges": window.profile(now).exchanges if window else 0,
                        "reference": ref.to_dict() if ref is not None else None,
                        "capturing": (
                            {
                                "exchanges": capture.profile.exchanges,
                                "ends_in_s": round(max(capture.until - now, 0.0), 3),
                            }
                            if capture is not None
                            else None
                        ),
                        "drifted": sorted({s.feature for s in scores if s.drifted}),
                        "scores": [s.to_dict() for s in scores],
                    }
                entry["quality"] = {
                    "sample": r.quality.sample,
                    "window_s": r.quality.window,
                    "min_samples": r.quality.thresholds.min_samples,
                    "backends": backends,
                }
            if r.shadow is not None:
                tally = self.shadow.tally(r.name, r.shadow.backend)
                entry["shadow"] = {
                    "backend": r.shadow.backend,
                    "share": r.shadow.share,
                    "in_flight": self.shadow.in_flight(r.name),
                    **tally.to_dict(),
                }
            routes[r.name] = entry
        return {
            "queue": {
                "depth": len(self.tap),
                "capacity": self.tap.capacity,
                "kept": self.tap.kept,
                "dropped": self.tap.dropped,
            },
            "processed": self.processed,
            "worker_cpu_s": round(self.cpu_seconds, 4),
            "routes": routes,
        }

    # --- life cycle ------------------------------------------------------------------------

    async def step(self) -> None:
        """One turn of the loop: drain, score when due, sync references when due."""
        now = self._clock.now()
        while True:
            batch = self.tap.take(BATCH)
            if not batch:
                break
            self._process(batch, now)
            await asyncio.sleep(0)  # let requests run between batches
        self._m.quality_queue.set(len(self.tap))
        if now >= self._next_score:
            self._next_score = now + SCORE_EVERY
            self.score(now)
        if now >= self._next_sync:
            self._next_sync = now + SYNC_EVERY
            await self.sync_store()

    def start(self) -> None:
        self._ticker.start()

    async def close(self) -> None:
        await self._ticker.close()
        await self.shadow.close()
        await self._pending.drain()
