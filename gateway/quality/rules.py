"""Prometheus alert rules for drift, generated from the compiled policy (pure data out).

`drift_alert_rules(routes)` returns rule dicts (alert, expr, for, labels, annotations) in
Prometheus' rule-file shape, ready to be put in a group beside the SLO rules: one drift
alert per route with `quality:`, its thresholds taken from the same policy the gateway
scores with, and one alert for a quality queue that keeps dropping (the worker is
behind, so the scores rest on fewer samples than configured).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.policy.units import format_duration
from gateway.quality.drift import DriftStat

if TYPE_CHECKING:
    from gateway.policy.compile import RouteRuntime

RUNBOOKS = "docs/runbooks"
ALERT_NAMES = ("TailguardDataDrift", "TailguardQualityQueueDropping")
# A drift must last this many windows before it pages anyone: one window of shifted
# traffic may be a burst of unusual clients, two are a trend.
FOR_WINDOWS = 2
MIN_FOR = 300.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def drift_alert_rules(routes: Iterable[RouteRuntime]) -> list[dict[str, Any]]:
    """Alert rules for every route with a `quality:` section, plus the queue alert."""
    rules: list[dict[str, Any]] = []
    for r in routes:
        q = r.quality
        if q is None:
            continue
        route = _label(r.name)
        expr = " or ".join(
            f'tailguard_drift_score{{route="{route}",stat="{stat.value}"}} > {q.thresholds.of(stat):g}'
            for stat in DriftStat
        )
        rules.append(
            {
                "alert": "TailguardDataDrift",
                "expr": expr,
                "for": format_duration(math.ceil(max(MIN_FOR, FOR_WINDOWS * q.window))),
                "labels": {"severity": "ticket", "route": r.name},
                "annotations": {
                    "summary": (
                        "{{ $labels.feature }} of route {{ $labels.route }} on backend "
                        "{{ $labels.backend }} drifted from its reference "
                        '({{ $labels.stat }} = {{ $value | printf "%.3f" }})'
                    ),
                    "description": (
                        "The current window's profile differs from the reference by more than "
                        "the route's threshold. Compare with `tailguard ctl quality show "
                        f"{r.name}`; if the change is intended, capture a new reference."
                    ),
                    "runbook_url": f"{RUNBOOKS}/TailguardDataDrift.md",
                },
            }
        )
    if rules:
        rules.append(
            {
                "alert": "TailguardQualityQueueDropping",
                "expr": "sum by (route) (rate(tailguard_quality_dropped_total[5m])) > 0",
                "for": "15m",
                "labels": {"severity": "ticket"},
                "annotations": {
                    "summary": "The quality worker of route {{ $labels.route }} is behind",
                    "description": (
                        "Sampled answers are dropped because the quality queue is full: drift "
                        "scores rest on fewer samples. Lower quality.sample or raise "
                        "gateway.quality_queue."
                    ),
                    "runbook_url": f"{RUNBOOKS}/TailguardQualityQueueDropping.md",
                },
            }
        )
    return rules
