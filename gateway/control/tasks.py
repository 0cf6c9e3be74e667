"""The two ways control-plane work runs beside the request path: on a tick, or in the background.

A controller owns a `Ticker` for its periodic turn and a `BackgroundTasks` for the
fire-and-forget calls the request path may not wait for (publishing a decision, telling
the peers). Both end when the controller closes: the ticker is cancelled, the background
calls are awaited, so nothing outlives the gateway that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class Ticker:
    """Calls `turn` every `interval()` seconds until closed; a failing turn is logged, not fatal.

    `interval` is asked before each sleep, so a reload that changes it takes effect at the
    next turn.
    """

    __slots__ = ("_closed", "_interval", "_log", "_task", "_turn", "_what")

    def __init__(
        self,
        turn: Callable[[], Awaitable[None]],
        interval: Callable[[], float],
        log: logging.Logger,
        what: str,
    ) -> None:
        self._turn = turn
        self._interval = interval
        self._log = log
        self._what = what
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        # the flag, not only the cancellation, ends the loop: a turn inside a library that
        # swallows a cancellation (redis-py's connection code has) must not keep it alive
        while not self._closed:
            await asyncio.sleep(self._interval())
            try:
                await self._turn()
            except Exception:
                self._log.exception("%s failed", self._what)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class BackgroundTasks:
    """Fire-and-forget calls, kept referenced until done (the loop holds only weak ones)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every call still running; their errors were theirs to log."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)


__all__ = ["BackgroundTasks", "Ticker"]
