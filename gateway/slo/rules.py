"""Prometheus recording and alerting rules for the policy's SLOs (pure: data in, data out).

The rules read the one counter the gateway exports for its SLOs,
`tailguard_slo_events_total{slo, route, result}`, so Prometheus judges exactly the events
the gateway's own budgets count (4xx excluded, fallbacks as the SLO says, latency against
the SLO's threshold). For each SLO:

* recording rules `tailguard:slo_error_ratio:rate<W>` for the seven windows W (5m .. 3d):
  bad events over all events, summed over routes and replicas (and `--workers` workers);
* two alerts, each the SRE Workbook's multi-window, multi-burn-rate pair: the page
  (`...FastBurn`: 14.4x over 1h and 5m, or 6x over 6h and 30m) and the ticket
  (`...SlowBurn`: 3x over 1d and 2h, or 1x over 3d and 6h).

Window names are those of a 30-day SLO; the ranges in the expressions are scaled to the
SLO's own window (a 7-day SLO's `rate1h` looks back 14 minutes), and once more by
`time_scale`, which exists for tests only (a real Prometheus proving the alerts in seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from gateway.slo.budget import BURN_ALERTS, BURN_WINDOWS, Severity, SliKind, SloConfig

EVENTS_METRIC = "tailguard_slo_events_total"
RECORD_PREFIX = "tailguard:slo_error_ratio:rate"
DEFAULT_RUNBOOK_BASE = "docs/runbooks"

_KIND_WORD = {SliKind.AVAILABILITY: "Availability", SliKind.LATENCY: "Latency"}
_SEVERITY_WORD = {Severity.PAGE: "FastBurn", Severity.TICKET: "SlowBurn"}


def alert_name(kind: SliKind, severity: Severity) -> str:
    """`TailguardAvailabilityBudgetFastBurn` and so on: one name (and runbook) per pair."""
    return f"Tailguard{_KIND_WORD[kind]}Budget{_SEVERITY_WORD[severity]}"


ALERT_NAMES: tuple[str, ...] = tuple(
    alert_name(kind, severity) for kind in SliKind for severity in Severity
)
"""Every alert the generator can emit; each has a runbook in docs/runbooks/<name>.md."""


def prom_duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as `300s` (or `5m`, `1h`, `1d`), else `2500ms`."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"a rule window must last at least 1ms, got {seconds!r} s")
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _selector(slo: SloConfig, result: str | None = None) -> str:
    extra = f',result="{result}"' if result else ""
    return f'{EVENTS_METRIC}{{slo="{slo.name}"{extra}}}'


def recording_rules(slo: SloConfig, time_scale: float = 1.0) -> list[dict[str, Any]]:
    rules = []
    for w in BURN_WINDOWS:
        rng = prom_duration(slo.seconds(w.name) * time_scale)
        rules.append(
            {
                "record": f"{RECORD_PREFIX}{w.name}",
                "expr": (
                    f"sum(rate({_selector(slo, 'bad')}[{rng}]))\n"
                    f"/\nsum(rate({_selector(slo)}[{rng}]))"
                ),
                "labels": {"slo": slo.name},
            }
        )
    return rules


def _budget(slo: SloConfig) -> str:
    return f"{round(slo.error_budget, 12):.12g}"


def alerting_rules(
    slo: SloConfig, runbook_base: str = DEFAULT_RUNBOOK_BASE
) -> list[dict[str, Any]]:
    out = []
    budget = _budget(slo)
    for severity in Severity:
        pairs = []
        for a in BURN_ALERTS:
            if a.severity is not severity:
                continue
            long = f'{RECORD_PREFIX}{a.long}{{slo="{slo.name}"}} > ({a.factor:g} * {budget})'
            short = f'{RECORD_PREFIX}{a.short}{{slo="{slo.name}"}} > ({a.factor:g} * {budget})'
            pairs.append(f"(\n  {long}\nand\n  {short}\n)")
        name = alert_name(slo.kind, severity)
        what = (
            "errors"
            if slo.kind is SliKind.AVAILABILITY
            else f"answers slower than {slo.latency_threshold or 0:g}s"
        )
        factors = ", ".join(
            f"{a.factor:g}x over {a.long} and {a.short}"
            for a in BURN_ALERTS
            if a.severity is severity
        )
        out.append(
            {
                "alert": name,
                "expr": "\nor\n".join(pairs),
                "labels": {
                    "severity": severity.value,
                    "slo": slo.name,
                    "route": ",".join(slo.routes),
                },
                "annotations": {
                    "summary": (
                        f"SLO {slo.name} ({slo.kind.value} {slo.objective * 100:g}%) burns "
                        f"its error budget {'fast' if severity is Severity.PAGE else 'slowly'}"
                    ),
                    "description": (
                        f"Route(s) {', '.join(slo.routes)}: {what} above the budget's burn "
                        f"thresholds ({factors}; windows named for a 30-day SLO, scaled to "
                        "this one's). See `tailguard status` for the budget left."
                    ),
                    "runbook_url": f"{runbook_base.rstrip('/')}/{name}.md",
                },
            }
        )
    return out


def rule_groups(
    slos: Sequence[SloConfig],
    *,
    time_scale: float = 1.0,
    runbook_base: str = DEFAULT_RUNBOOK_BASE,
) -> list[dict[str, Any]]:
    """One group per SLO: its recording rules, then its two alerts."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
    return [
        {
            "name": f"tailguard-slo-{slo.name}",
            "rules": [*recording_rules(slo, time_scale), *alerting_rules(slo, runbook_base)],
        }
        for slo in slos
    ]


def prometheus_rules(slos: Sequence[SloConfig], **kw: Any) -> dict[str, Any]:
    """A rules file for Prometheus' `rule_files` (and `promtool check rules`)."""
    return {"groups": rule_groups(slos, **kw)}


def kubernetes_rules(
    slos: Sequence[SloConfig], *, name: str = "tailguard-slos", **kw: Any
) -> dict[str, Any]:
    """The same groups as a prometheus-operator `PrometheusRule` resource."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "tailguard",
                "app.kubernetes.io/part-of": "tailguard",
            },
        },
        "spec": {"groups": rule_groups(slos, **kw)},
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the expressions) as `|` blocks, so the file reads like a hand-written one."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def rules_yaml(doc: dict[str, Any]) -> str:
    """The document as YAML, keys in the order built, expressions as blocks."""
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=100, allow_unicode=True)


__all__ = [
    "ALERT_NAMES",
    "DEFAULT_RUNBOOK_BASE",
    "EVENTS_METRIC",
    "RECORD_PREFIX",
    "alert_name",
    "alerting_rules",
    "kubernetes_rules",
    "prom_duration",
    "prometheus_rules",
    "recording_rules",
    "rule_groups",
    "rules_yaml",
]
