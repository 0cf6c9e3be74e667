"""The JSON access log: one line per request, written when its exchange ends.

Off unless the policy has `telemetry.access_log`. A line is built only for a sampled
request, so a 1% sample costs one random draw per request for the other 99%.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gateway.telemetry.config import AccessLogConfig

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange


class AccessLog:
    """Writes access lines to stdout or an append-only file; the caller `close`s it at stop."""

    def __init__(
        self,
        config: AccessLogConfig,
        base_dir: Path,
        rng: random.Random,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._sample = config.sample
        self._rng = rng
        self._wall = wall
        self._own: IO[str] | None = None
        if config.path == "stdout":
            self._out: IO[str] = sys.stdout
        else:
            path = Path(config.path)
            path = path if path.is_absolute() else base_dir / path
            # line-buffered: a line is whole on disk when the request is over
            self._out = self._own = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def set_sample(self, sample: float) -> None:
        """A reloaded policy's sampling rate (the destination is kept until restart)."""
        self._sample = sample

    def write(self, ex: Exchange, duration: float) -> None:
        if self._sample < 1.0 and self._rng.random() >= self._sample:
            return
        self._out.write(
            json.dumps(access_record(ex, duration, self._wall()), separators=(",", ":")) + "\n"
        )

    def event(self, entry: dict[str, object]) -> None:
        """A state change, on the same stream as the requests (never sampled out)."""
        wall = entry.get("time")
        record: dict[str, object] = {
            "time": _iso(wall if isinstance(wall, float) else self._wall()),
            "event": "state_change",
        }
        record.update((k, v) for k, v in entry.items() if k != "time")
        self._out.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None


def access_record(ex: Exchange, duration: float, wall: float) -> dict[str, Any]:
    """The fields of one access line (documented in docs/observability.md)."""
    backend = ex.backend
    region = None
    if backend is not None and ex.endpoint is not None:
        region = next((s.spec.region for s in backend.states if s.spec.url == ex.endpoint), None)
    trace_id = ex.trace.trace_id if ex.trace is not None else None
    return {
        "time": _iso(wall),
        "request_id": ex.request.request_id,
        "trace_id": trace_id,
        "method": ex.request.method,
        "path": ex.request.path,
        "route": ex.route.name if ex.route is not None else None,
        "backend": backend.name if backend is not None else None,
        "endpoint": ex.endpoint,
        "region": region,
        "attempts": ex.attempts,
        "hedged": ex.hedged,
        "fallback": ex.fallback,
        "status": ex.status,
        "error": ex.error_code,
        "duration_ms": round(duration * 1000, 3),
        "bytes_in": len(ex.request.body),
        "bytes_out": ex.sent_bytes,
        "tenant": ex.identity.tenant if ex.identity is not None else None,
    }


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


__all__ = ["AccessLog", "access_record"]
