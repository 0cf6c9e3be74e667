"""State changes: bounded for the page, handed whole to the event sink, traced when caused."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from gateway.clock import FakeClock
from gateway.telemetry.access import AccessLog
from gateway.telemetry.changes import StateChanges
from gateway.telemetry.config import AccessLogConfig


def test_each_change_goes_to_the_sink_and_the_list_stays_bounded() -> None:
    changes = StateChanges(FakeClock(), keep=3)
    seen: list[dict[str, object]] = []
    changes.sink = seen.append
    for k in range(5):
        changes.record("health", f"endpoint {k} unhealthy", endpoint=f"e{k}", state="unhealthy")
    assert len(changes) == 3 and [c["endpoint"] for c in changes] == ["e2", "e3", "e4"]
    assert [c["endpoint"] for c in seen] == ["e0", "e1", "e2", "e3", "e4"]
    assert all("trace_id" not in c for c in seen)

    changes.trace_id = "ab" * 16
    changes.record("breaker", "breaker of e1: closed -> open", state="open")
    changes.trace_id = None
    changes.record("policy", "policy applied")
    assert seen[-2]["trace_id"] == "ab" * 16 and "trace_id" not in seen[-1]


def test_an_event_line_shares_the_access_log_stream_and_is_never_sampled_out(
    tmp_path: Path,
) -> None:
    log = AccessLog(AccessLogConfig(path="stdout", sample=0.000001), tmp_path, random.Random(1))
    out = io.StringIO()
    log._out = out
    log.event({"time": 0.25, "kind": "store", "what": "state store unavailable", "state": "down"})
    line = json.loads(out.getvalue())
    assert line == {
        "time": "1970-01-01T00:00:00.250Z",
        "event": "state_change",
        "kind": "store",
        "what": "state store unavailable",
        "state": "down",
    }
