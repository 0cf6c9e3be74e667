"""Endpoint news between replicas: what one saw fail, the others avoid at once.

When a replica's breaker opens on an endpoint or its outlier detector ejects one, it
publishes the fact on the shared store. Peers mark that endpoint suspect for
`state.suspect_for` (it gets no new traffic unless panic routing needs it) instead of
each finding out by sending their own share of failing requests. What a peer hears is
counted as detected; what it acts on, as enforced. A replica ignores its own messages.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

from gateway.clock import Clock
from gateway.control.tasks import BackgroundTasks
from gateway.errors import StoreUnavailable
from gateway.policy.compile import Snapshot
from gateway.state.store import StateStore
from gateway.telemetry.catalog import Metrics

log = logging.getLogger("tailguard.peers")

CHANNEL = "endpoint-events"

# What replicas tell each other; anything else on the channel is ignored.
EVENTS = frozenset({"ejected", "breaker-open"})


class PeerNotifier:
    """Publishes this replica's endpoint failures and applies its peers'."""

    def __init__(
        self,
        store: StateStore,
        current: Callable[[], Snapshot],
        metrics: Metrics,
        clock: Clock,
        replica: str | None = None,
    ) -> None:
        self._store = store
        self._current = current
        self._m = metrics
        self._clock = clock
        self.replica = replica or os.urandom(8).hex()
        self._pending = BackgroundTasks()

    def enabled(self) -> bool:
        s = self._current().settings.state
        return self._store.shared and s.share_ejections

    def attach(self) -> None:
        """Start listening; call once before the store starts."""
        if self._store.shared:
            self._store.subscribe(CHANNEL, self.receive)

    def notify(self, backend: str, endpoint_id: str, event: str) -> None:
        """Tell the peers (fire and forget: the caller is on the request path); `event` in EVENTS."""
        if not self.enabled() or not self._store.available():
            return
        message = json.dumps(
            {"replica": self.replica, "backend": backend, "endpoint": endpoint_id, "event": event}
        ).encode()
        self._pending.spawn(self._publish(message))

    async def _publish(self, message: bytes) -> None:
        try:
            await self._store.publish(CHANNEL, message)
        except StoreUnavailable:
            pass  # counted by the store; the peers find out by themselves

    def receive(self, raw: bytes) -> None:
        """Apply one peer's message: mark the endpoint suspect for a while."""
        try:
            msg = json.loads(raw)
            replica, backend = str(msg["replica"]), str(msg["backend"])
            endpoint, event = str(msg["endpoint"]), str(msg["event"])
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("ignoring a malformed endpoint event from a peer")
            return
        if replica == self.replica:
            return
        snapshot = self._current()
        b = snapshot.backends.get(backend)
        if b is None or event not in EVENTS:
            # a peer on another policy, or garbage: its names must not become metric labels
            log.debug("ignoring endpoint event %r on unknown backend %r", event, backend)
            return
        self._m.peer_events.labels(backend, event, "detected").inc()
        if not snapshot.settings.state.share_ejections:
            return
        for state in b.states:
            if state.spec.id == endpoint:
                state.suspect_until = self._clock.now() + snapshot.settings.state.suspect_for
                self._m.peer_events.labels(backend, event, "enforced").inc()
                log.info("peer %s reports %s on %s: suspect", replica, event, state.spec.url)
                return

    async def close(self) -> None:
        await self._pending.drain()


__all__ = ["CHANNEL", "EVENTS", "PeerNotifier"]
