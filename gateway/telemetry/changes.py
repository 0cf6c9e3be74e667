"""Recent state changes, for the status page and `/admin/status`: what moved, and when.

Breakers opening and closing, endpoints turning unhealthy or healthy again, ejections and
un-ejections, drains, canary steps and policy reloads each add one entry. The list is
bounded (the oldest entries go first), so a flapping endpoint cannot grow it; the logs and
the audit log keep the full history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from gateway.clock import Clock

# entries kept for the status page
RECENT_CHANGES = 50


class StateChanges:
    """A bounded list of state changes, newest last; each entry says `time`, `kind`, `what`.

    `time` is wall-clock (Unix seconds: the page shows it as a time of day); `kind` is one of
    `breaker`, `health`, `ejection`, `drain`, `canary`, `policy`; `what` is the sentence the
    page shows. Extra fields (backend, endpoint, region…) let a client filter.
    """

    __slots__ = ("_clock", "_entries")

    def __init__(self, clock: Clock, keep: int = RECENT_CHANGES) -> None:
        self._clock = clock
        self._entries: deque[dict[str, object]] = deque(maxlen=keep)

    def record(self, kind: str, what: str, **fields: object) -> None:
        self._entries.append({"time": self._clock.wall(), "kind": kind, "what": what, **fields})

    def __iter__(self) -> Iterator[dict[str, object]]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["RECENT_CHANGES", "StateChanges"]
