"""Failures are logged at a bounded rate, never not at all."""

from __future__ import annotations

import logging

import pytest

from gateway.clock import FakeClock
from gateway.telemetry.logs import FailureSummary, RateLimitedLog


def test_a_storm_of_failures_writes_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    summary = FailureSummary(logging.getLogger("t.failures"), clock, interval=10.0)
    with caplog.at_level(logging.WARNING, "t.failures"):
        for k in range(1600):
            clock.advance(0.025)  # 1,600 failures over 40 s
            summary.count("classify", "upstream_failed" if k % 2 else "deadline_exceeded")
    lines = [r.getMessage() for r in caplog.records]
    assert 4 <= len(lines) <= 6
    assert lines[0].startswith("1 request failed")
    assert "classify: " in lines[-1] and "upstream_failed" in lines[-1]
    # every failure is in some line's count
    total = sum(int(line.split(" ", 1)[0]) for line in lines)
    assert 1600 - total < 400  # at most one interval's worth is still waiting


def test_repeated_events_are_summarised(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    note = RateLimitedLog(logging.getLogger("t.streams"), clock, "broken streams", interval=10.0)
    with caplog.at_level(logging.WARNING, "t.streams"):
        for _ in range(50):
            note.note("stream broke")
            clock.advance(0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0] == "stream broke"
    assert "and 19 more broken streams" in lines[1]
