"""Recent state changes, for the status page and `/admin/status`: what moved, and when.

Breakers opening and closing, endpoints turning unhealthy or healthy again, ejections and
un-ejections, drains, canary steps, policy reloads and the state store going away or
coming back each add one entry. The list is bounded (the oldest entries go first), so a
flapping endpoint cannot grow it. Every entry is also handed to `sink`, which writes it as a
structured event (one JSON line: the access log's stream when it is on, else the
`tailguard.events` logger), so the full history is in the logs. A change a request caused
(a breaker it opened, an ejection it triggered) carries that request's `trace_id` when it
was traced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from gateway.clock import Clock

# entries kept for the status page
RECENT_CHANGES = 50


class StateChanges:
    """A bounded list of state changes, newest last; each entry says `time`, `kind`, `what`.

    `time` is wall-clock (Unix seconds: the page shows it as a time of day); `kind` is one of
    `breaker`, `health`, `ejection`, `drain`, `canary`, `policy`, `store`; `what` is the sentence the
    page shows. Extra fields (backend, endpoint, region…) let a client filter.
    """

    __slots__ = ("_clock", "_entries", "sink", "trace_id")

    def __init__(self, clock: Clock, keep: int = RECENT_CHANGES) -> None:
        self._clock = clock
        self._entries: deque[dict[str, object]] = deque(maxlen=keep)
        self.sink: Callable[[dict[str, object]], None] | None = None
        # the trace of the request whose outcome is being recorded, set around that call
        self.trace_id: str | None = None

    def record(self, kind: str, what: str, **fields: object) -> None:
        entry: dict[str, object] = {"time": self._clock.wall(), "kind": kind, "what": what}
        entry.update(fields)
        if self.trace_id is not None:
            entry["trace_id"] = self.trace_id
        self._entries.append(entry)
        if self.sink is not None:
            self.sink(entry)

    def __iter__(self) -> Iterator[dict[str, object]]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["RECENT_CHANGES", "StateChanges"]
