"""Infrastructure metrics the process measures about itself: event-loop lag and GC pauses.

CPU, memory and file descriptors come from prometheus_client's process collector (in the
catalog). The loop-lag probe is one timer task per process; the GC probe is a `gc.callbacks`
hook, which costs two clock reads per collection and nothing per request. Under
`--workers` each worker runs its own and the supervisor labels them by worker.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from gateway.telemetry.catalog import Metrics

# How often the loop-lag probe wakes: often enough to see a stall, rare enough to cost nothing.
LOOP_LAG_INTERVAL = 0.25


class LoopLagProbe:
    """Sleeps `interval` on the loop and records how late it woke (the loop's scheduling delay).

    The caller starts it once the loop runs (`start`) and awaits `close` on shutdown.
    """

    def __init__(
        self,
        metrics: Metrics,
        interval: float = LOOP_LAG_INTERVAL,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hist = metrics.loop_lag
        self._interval = interval
        self._now = now
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        interval, now, observe = self._interval, self._now, self._hist.observe
        while True:
            due = now() + interval
            await asyncio.sleep(interval)
            observe(max(now() - due, 0.0))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


class GcPauseProbe:
    """Times each cyclic collection through `gc.callbacks`; `install` once, `remove` at stop."""

    def __init__(self, metrics: Metrics, now: Callable[[], float] = time.perf_counter) -> None:
        self._children = [metrics.gc_pause.labels(str(g)) for g in range(3)]
        self._now = now
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._now()
        elif self._started:
            self._children[min(int(info.get("generation", 0)), 2)].observe(
                self._now() - self._started
            )
            self._started = 0.0

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


__all__ = ["LOOP_LAG_INTERVAL", "GcPauseProbe", "LoopLagProbe"]
