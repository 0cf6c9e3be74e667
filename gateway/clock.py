"""Clocks, injected everywhere time matters.

Decision objects never read a clock; the async code reads one of these and
passes `now` in. Tests drive a `FakeClock` instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Unix seconds, for what other processes must read the same way (cache ages, tokens)."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic`, immune to wall-clock jumps."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to, for exact tests of timed decisions."""

    __slots__ = ("_now", "_wall_offset")

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        return self._now
