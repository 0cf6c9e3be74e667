"""Logs that stay readable under a storm: state changes always, repeated failures summarised.

A thousand failed requests a second must not write a thousand lines, and must not write
none either. `RateLimitedLog` writes the first occurrence of a kind of event at once and
then at most one summary line per interval; `FailureSummary` does the same for failed
requests, counted by route and error code.
"""

from __future__ import annotations

import logging
from collections import Counter

from gateway.clock import Clock

# The shortest time between two summary lines of the same kind.
SUMMARY_INTERVAL = 10.0


class RateLimitedLog:
    """Logs a message at once, then counts the next ones and summarises them per interval."""

    __slots__ = ("_clock", "_interval", "_kind", "_level", "_log", "_next", "_suppressed")

    def __init__(
        self,
        log: logging.Logger,
        clock: Clock,
        kind: str,
        *,
        level: int = logging.WARNING,
        interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self._log = log
        self._clock = clock
        self._kind = kind
        self._level = level
        self._interval = interval
        self._next = float("-inf")
        self._suppressed = 0

    def note(self, message: str) -> None:
        now = self._clock.now()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            self._log.log(
                self._level,
                "%s (and %d more %s in the last %.0fs)",
                message,
                self._suppressed,
                self._kind,
                self._interval,
            )
        else:
            self._log.log(self._level, "%s", message)
        self._suppressed = 0
        self._next = now + self._interval


class FailureSummary:
    """Failed requests by route and code, written as one line per interval at most."""

    __slots__ = ("_clock", "_counts", "_interval", "_log", "_since")

    def __init__(
        self, log: logging.Logger, clock: Clock, interval: float = SUMMARY_INTERVAL
    ) -> None:
        self._log = log
        self._clock = clock
        self._interval = interval
        self._counts: Counter[tuple[str, str]] = Counter()
        self._since: float | None = None

    def count(self, route: str, code: str) -> None:
        now = self._clock.now()
        self._counts[(route or "-", code)] += 1
        if self._since is None:
            self._since = now
            self._flush(now)  # the first failure after a quiet spell is news at once
        elif now - self._since >= self._interval:
            self._flush(now)

    def _flush(self, now: float) -> None:
        counts = self._counts
        total = sum(counts.values())
        parts = ", ".join(f"{route}: {code} x{n}" for (route, code), n in counts.most_common(5))
        more = len(counts) - 5
        self._log.warning(
            "%d request%s failed%s: %s%s",
            total,
            "" if total == 1 else "s",
            "" if total == 1 else f" in the last {max(now - (self._since or now), 0.0):.0f}s",
            parts,
            f" and {more} more kinds" if more > 0 else "",
        )
        counts.clear()
        self._since = now


__all__ = ["SUMMARY_INTERVAL", "FailureSummary", "RateLimitedLog"]
