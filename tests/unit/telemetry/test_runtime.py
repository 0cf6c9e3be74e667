from __future__ import annotations

from gateway.telemetry.catalog import LabelGuard, Metrics
from gateway.telemetry.runtime import GcPauseProbe


def test_label_guard_folds_values_past_the_limit_and_counts_them() -> None:
    m = Metrics()
    guard = LabelGuard(m, "tenant", 2)
    assert [guard(v) for v in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        "other",
        "a",
        "other",
        "b",
    ]
    assert m.label_folds.labels("tenant")._value.get() == 2
    guard.set_limit(3)
    assert guard("e") == "e"
    assert guard("f") == "other"


def test_gc_probe_times_each_collection_by_generation() -> None:
    m = Metrics()
    ticks = iter([1.0, 1.004, 2.0, 2.5])
    probe = GcPauseProbe(m, now=lambda: next(ticks))
    probe("start", {"generation": 0})
    probe("stop", {"generation": 0})
    probe("start", {"generation": 2})
    probe("stop", {"generation": 2})
    gen0 = m.gc_pause.labels("0")
    gen2 = m.gc_pause.labels("2")
    assert abs(gen0._sum.get() - 0.004) < 1e-9
    assert gen2._sum.get() == 0.5
