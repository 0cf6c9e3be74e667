"""The audit log: one JSON line per decision an operator may have to explain later.

Policy applied or rejected (with hashes and a diff summary), admin actions, canary steps
and verdicts — each with its actor and time. A line is written, flushed and synced to
disk before the action it records is acknowledged, so an acknowledged action is never
missing from the log. Append-only: the gateway opens the file in append mode and never
rewrites it. Secrets are never passed in; callers give names and hashes only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from gateway.clock import Clock

log = logging.getLogger("tailguard.audit")


class AuditLog:
    """Appends JSON lines to a file (when configured) and always to the `tailguard.audit` logger."""

    def __init__(self, path: str | Path | None, clock: Clock) -> None:
        self.path = Path(path) if path else None
        self._clock = clock
        self._lock = threading.Lock()
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open

    def record(self, event: str, actor: str, **fields: Any) -> dict[str, Any]:
        """Write one entry and return it; returns only once the line is on disk."""
        entry = {"time": round(self._clock.wall(), 3), "event": event, "actor": actor, **fields}
        line = json.dumps(entry, separators=(",", ":"), default=str)
        log.info("%s", line)
        if self._file is not None:
            with self._lock:
                self._file.write(line + "\n")
                self._file.flush()
                os.fsync(self._file.fileno())
        return entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["AuditLog"]
