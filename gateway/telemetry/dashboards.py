"""Grafana dashboards generated from code, checked against the metric catalog.

`python -m gateway.telemetry.dashboards deploy/grafana` writes the four dashboards
(overview, route, backend, canary) as importable JSON. Every query is written here, next to
`catalog_series`, which lists what the gateway exports; `unknown_references` finds a metric
or label a query names that the gateway does not export, and the tests run it on every
panel, so a renamed metric breaks the build instead of a dashboard going blank.

Labels a scrape adds are allowed besides the catalog's: `instance` and `job` (Prometheus),
`worker` (the `--workers` supervisor's merged /metrics), and `le` on histogram buckets.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from gateway.telemetry.catalog import Metrics
from gateway.telemetry.hot import HotCounter, HotGauge, HotHistogram

SCRAPE_LABELS = frozenset({"instance", "job", "worker"})
RATE = "[$__rate_interval]"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# --- what the gateway exports -----------------------------------------------------------------


def catalog_series(metrics: Metrics | None = None) -> dict[str, frozenset[str]]:
    """Every series name the gateway exports, with the label names it carries."""
    m = metrics or Metrics()
    out: dict[str, frozenset[str]] = {}
    for value in vars(m).values():
        if isinstance(value, HotCounter):
            out[value.name + "_total"] = frozenset(value.labelnames)
        elif isinstance(value, HotHistogram):
            labels = frozenset(value.labelnames)
            out[value.name + "_bucket"] = labels | {"le"}
            out[value.name + "_sum"] = labels
            out[value.name + "_count"] = labels
        elif isinstance(value, HotGauge):
            out[value.name] = frozenset()
        elif isinstance(value, MetricWrapperBase):
            name, labels, kind = value._name, frozenset(value._labelnames), value._type
            if kind == "counter":
                out[name + "_total"] = labels
            elif kind == "info":
                out[name + "_info"] = labels | {"source", "sha256", "version"}
            elif kind == "histogram":
                out[name + "_bucket"] = labels | {"le"}
                out[name + "_sum"] = labels
                out[name + "_count"] = labels
            else:
                out[name] = labels
    return out


_METRIC = re.compile(r"\b(tailguard_[a-z0-9_]+)\b")
_MATCHERS = re.compile(r"(tailguard_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(tailguard_[a-z0-9_]+)\s*,\s*([a-zA-Z_]\w*)\s*\)")


def unknown_references(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Metrics and labels `expr` names that the gateway does not export (empty: all known)."""
    problems = []
    names = _METRIC.findall(expr)
    for name in names:
        if name not in series:
            problems.append(f"unknown metric {name}")
    for name, body in _MATCHERS.findall(expr):
        for label in _MATCHER_LABEL.findall(body):
            if name in series and label not in series[name] | SCRAPE_LABELS:
                problems.append(f"{name} has no label {label}")
    known = frozenset().union(*(series.get(n, frozenset()) for n in names)) | SCRAPE_LABELS
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in known:
                problems.append(f"no metric in the query has the label {label}")
    for name, label in _LABEL_VALUES.findall(expr):
        if name in series and label not in series[name] | SCRAPE_LABELS:
            problems.append(f"{name} has no label {label}")
    return problems


# --- building blocks ------------------------------------------------------------------------


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (query, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8
    stack: bool = False
    thresholds: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}]
            + [{"color": c, "value": v} for v, c in panel.thresholds],
        }
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
    out: dict[str, Any] = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "refId": chr(65 + i),
                # sampled requests' trace ids ride on these buckets: show them as points
                **({"exemplar": True} if _has_exemplars(expr) else {}),
            }
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }
    return out


# histograms whose buckets carry trace-id exemplars (see gateway/proxy/pipeline.py)
EXEMPLAR_FAMILIES = (
    "tailguard_request_duration_seconds_bucket",
    "tailguard_time_to_first_byte_seconds_bucket",
    "tailguard_stream_time_to_first_token_seconds_bucket",
)


def _has_exemplars(expr: str) -> bool:
    return any(f in expr for f in EXEMPLAR_FAMILIES)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "StandardVariableQuery"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "options": [],
        "sort": 1,
    }


def dashboard(
    uid: str, title: str, rows: list[Row], variables: Iterable[tuple[str, str, str]] = ()
) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        panels.append(
            {"id": pid, "type": "row", "title": row.title, "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        )  # fmt: skip
        pid, y, x, row_height = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, row_height = pid + 1, x + p.width, max(row_height, p.height)
        y += row_height
    templating = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "refresh": 1,
        },
        *(_variable(*v) for v in variables),
    ]
    return {
        "uid": uid,
        "title": title,
        "tags": ["tailguard"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "links": [
            {"type": "dashboards", "tags": ["tailguard"], "asDropdown": True, "title": "Tailguard"}
        ],
        "annotations": {"list": []},
        "templating": {"list": templating},
        "panels": panels,
    }


def _ratio(num: str, den: str) -> str:
    return f"({num}) / clamp_min({den}, 1e-9)"


def _quantiles(metric: str, selector: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{selector}{RATE})))",
            f"{legend}p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


# --- the dashboards ---------------------------------------------------------------------------

R = '{route=~"$route"}'
B = '{backend=~"$backend"}'


def overview() -> dict[str, Any]:
    req = "tailguard_requests_total"
    return dashboard(
        "tailguard-overview",
        "Tailguard / Overview",
        [
            Row(
                "Traffic",
                [
                    Panel(
                        "Requests per second by route",
                        [(f"sum by (route) (rate({req}{RATE}))", "{{route}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Answers by status class",
                        [(f"sum by (code_class) (rate({req}{RATE}))", "{{code_class}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Server errors (5xx) ratio",
                        [
                            (
                                _ratio(
                                    f'sum(rate({req}{{code_class="5xx"}}{RATE}))',
                                    f"sum(rate({req}{RATE}))",
                                ),
                                "5xx ratio",
                            )
                        ],
                        "percentunit",
                        width=8,
                        thresholds=[(0.001, "orange"), (0.01, "red")],
                    ),
                    Panel(
                        "Latency (all routes)",
                        _quantiles("tailguard_request_duration_seconds", ""),
                        "s",
                        width=12,
                    ),
                    Panel(
                        "In flight",
                        [("sum by (instance) (tailguard_requests_in_flight)", "{{instance}}")],
                        "short",
                        width=12,
                    ),
                ],
            ),
            Row(
                "Protection",
                [
                    Panel(
                        "Gateway's own errors by code",
                        [(f"sum by (code) (rate(tailguard_errors_total{RATE}))", "{{code}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Shed by reason",
                        [(f"sum by (reason) (rate(tailguard_shed_total{RATE}))", "{{reason}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Fallback answers by kind",
                        [(f"sum by (kind) (rate(tailguard_fallbacks_total{RATE}))", "{{kind}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Open breakers",
                        [("count(tailguard_breaker_state == 2) or vector(0)", "open")],
                        "short",
                        kind="stat",
                        width=6,
                        thresholds=[(1, "red")],
                    ),
                    Panel(
                        "Endpoints ejected",
                        [("sum(tailguard_endpoints_ejected) or vector(0)", "ejected")],
                        "short",
                        kind="stat",
                        width=6,
                        thresholds=[(1, "orange")],
                    ),
                    Panel(
                        "Unhealthy endpoints",
                        [("count(tailguard_endpoint_healthy == 0) or vector(0)", "unhealthy")],
                        "short",
                        kind="stat",
                        width=6,
                        thresholds=[(1, "orange")],
                    ),
                    Panel(
                        "Canaries in progress",
                        [
                            (
                                "count(tailguard_canary_weight_percent > 0 and tailguard_canary_weight_percent < 100) or vector(0)",
                                "canaries",
                            )
                        ],
                        "short",
                        kind="stat",
                        width=6,
                    ),
                ],
            ),
            Row(
                "Replicas",
                [
                    Panel(
                        "State store up (0: serving on local state)",
                        [("min by (instance) (tailguard_state_store_up)", "{{instance}}")],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "State store calls failed or skipped",
                        [
                            (
                                f"sum by (op) (rate(tailguard_state_store_errors_total{RATE}))",
                                "failed {{op}}",
                            ),
                            (
                                f"sum by (op) (rate(tailguard_state_store_skipped_total{RATE}))",
                                "skipped {{op}}",
                            ),
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Policy reloads",
                        [
                            (
                                f"sum by (result) (increase(tailguard_policy_reloads_total{RATE}))",
                                "{{result}}",
                            )
                        ],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Policy serving per replica",
                        [("count by (sha256) (tailguard_policy_info)", "{{sha256}}")],
                        "short",
                        width=12,
                        description="More than one line: replicas serve different policies (a rollout, or a rejected push).",
                    ),
                    Panel(
                        "Peer events",
                        [
                            (
                                f"sum by (event, action) (rate(tailguard_peer_events_total{RATE}))",
                                "{{event}} {{action}}",
                            )
                        ],
                        "ops",
                        width=12,
                    ),
                ],
            ),
        ],
    )


def route() -> dict[str, Any]:
    req = "tailguard_requests_total"
    return dashboard(
        "tailguard-route",
        "Tailguard / Route",
        [
            Row(
                "Answers",
                [
                    Panel(
                        "Requests by backend that answered",
                        [(f"sum by (backend) (rate({req}{R}{RATE}))", "{{backend}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Answers by status class",
                        [(f"sum by (code_class) (rate({req}{R}{RATE}))", "{{code_class}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Availability",
                        [
                            (
                                _ratio(
                                    f'sum(rate({req}{{route=~"$route",code_class!="5xx"}}{RATE}))',
                                    f"sum(rate({req}{R}{RATE}))",
                                ),
                                "non-5xx",
                            )
                        ],
                        "percentunit",
                        width=8,
                    ),
                    Panel(
                        "Latency",
                        _quantiles("tailguard_request_duration_seconds", R),
                        "s",
                        width=12,
                    ),
                    Panel(
                        "Gateway's own errors by code",
                        [(f"sum by (code) (rate(tailguard_errors_total{R}{RATE}))", "{{code}}")],
                        "reqps",
                        stack=True,
                        width=12,
                    ),
                ],
            ),
            Row(
                "Attempts",
                [
                    Panel(
                        "Attempts per request (mean)",
                        [
                            (
                                _ratio(
                                    f"sum(rate(tailguard_attempts_per_request_sum{R}{RATE}))",
                                    f"sum(rate(tailguard_attempts_per_request_count{R}{RATE}))",
                                ),
                                "attempts",
                            )
                        ],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Retry decisions by reason",
                        [
                            (
                                f"sum by (reason) (rate(tailguard_retries_total{R}{RATE}))",
                                "{{reason}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Budget exhausted",
                        [
                            (
                                f"sum by (kind) (rate(tailguard_budget_exhausted_total{R}{RATE}))",
                                "{{kind}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Hedges sent and won",
                        [
                            (f"sum(rate(tailguard_hedges_sent_total{R}{RATE}))", "sent"),
                            (f"sum(rate(tailguard_hedges_won_total{R}{RATE}))", "won"),
                        ],
                        "ops",
                        width=12,
                    ),
                    Panel(
                        "Switched to (blue/green)",
                        [
                            (
                                f"max by (route, backend) (tailguard_route_switched{R})",
                                "{{route}} → {{backend}}",
                            )
                        ],
                        "short",
                        width=12,
                        description="1 while `tailguard ctl route switch` sends the whole route to this backend.",
                    ),
                    Panel(
                        "Concurrency limit",
                        [("sum by (route) (tailguard_admission_limit" + R + ")", "{{route}}")],
                        "short",
                        width=12,
                    ),
                ],
            ),
            Row(
                "Admission and fallbacks",
                [
                    Panel(
                        "Shed by reason",
                        [(f"sum by (reason) (rate(tailguard_shed_total{R}{RATE}))", "{{reason}}")],
                        "reqps",
                        width=8,
                    ),
                    Panel(
                        "Rate limited",
                        [
                            (f"sum(rate(tailguard_rate_limited_total{R}{RATE}))", "429"),
                            (
                                f"sum by (action) (rate(tailguard_rate_limit_store_fallbacks_total{R}{RATE}))",
                                "without store: {{action}}",
                            ),
                        ],
                        "reqps",
                        width=8,
                    ),
                    Panel(
                        "Authentication failures",
                        [
                            (
                                f"sum by (code) (rate(tailguard_auth_failures_total{R}{RATE}))",
                                "{{code}}",
                            )
                        ],
                        "reqps",
                        width=8,
                    ),
                    Panel(
                        "Cache lookups and stores",
                        [
                            (
                                f"sum by (result) (rate(tailguard_cache_lookups_total{R}{RATE}))",
                                "lookup {{result}}",
                            ),
                            (
                                f"sum by (result) (rate(tailguard_cache_stores_total{R}{RATE}))",
                                "store {{result}}",
                            ),
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Fallback answers",
                        [(f"sum by (kind) (rate(tailguard_fallbacks_total{R}{RATE}))", "{{kind}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Fallback steps that failed",
                        [
                            (
                                f"sum by (kind) (rate(tailguard_fallback_failures_total{R}{RATE}))",
                                "{{kind}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                ],
            ),
        ],
        [("route", "Route", "label_values(tailguard_requests_total, route)")],
    )


def backend() -> dict[str, Any]:
    by_region = "* on (backend, endpoint) group_left (region) tailguard_endpoint_info"
    return dashboard(
        "tailguard-backend",
        "Tailguard / Backend and endpoints",
        [
            Row(
                "Attempts",
                [
                    Panel(
                        "Attempts by outcome",
                        [
                            (
                                f"sum by (outcome) (rate(tailguard_upstream_attempts_total{B}{RATE}))",
                                "{{outcome}}",
                            )
                        ],
                        "ops",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Attempts by endpoint",
                        [
                            (
                                f"sum by (endpoint) (rate(tailguard_upstream_attempts_total{B}{RATE}))",
                                "{{endpoint}}",
                            )
                        ],
                        "ops",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Attempt latency",
                        _quantiles("tailguard_upstream_attempt_duration_seconds", B, "backend"),
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Failed attempts by endpoint",
                        [
                            (
                                f'sum by (endpoint) (rate(tailguard_upstream_attempts_total{{backend=~"$backend",outcome!="success"}}{RATE}))',
                                "{{endpoint}}",
                            )
                        ],
                        "ops",
                        width=12,
                    ),
                    Panel(
                        "Attempts by region",
                        [
                            (
                                f"sum by (region) (rate(tailguard_upstream_attempts_total{B}{RATE}) {by_region})",
                                "{{region}}",
                            )
                        ],
                        "ops",
                        stack=True,
                        width=12,
                    ),
                ],
            ),
            Row(
                "Health and regions",
                [
                    Panel(
                        "Healthy endpoints by region",
                        [
                            (
                                f"sum by (backend, region) (tailguard_endpoint_healthy{B} {by_region})",
                                "{{backend}} {{region}}",
                            )
                        ],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Health check verdict per endpoint",
                        [(f"max by (endpoint) (tailguard_endpoint_healthy{B})", "{{endpoint}}")],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Failed health checks",
                        [
                            (
                                f'sum by (endpoint) (rate(tailguard_health_checks_total{{backend=~"$backend",result="fail"}}{RATE}))',
                                "{{endpoint}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Panic routing",
                        [
                            (
                                f"sum by (backend) (rate(tailguard_panic_routing_total{B}{RATE}))",
                                "{{backend}}",
                            )
                        ],
                        "ops",
                        width=12,
                        description="Picks made with too few healthy endpoints (route to all rather than none).",
                    ),
                    Panel(
                        "Peer reports acted on",
                        [
                            (
                                f"sum by (event, action) (rate(tailguard_peer_events_total{B}{RATE}))",
                                "{{event}} {{action}}",
                            )
                        ],
                        "ops",
                        width=12,
                    ),
                ],
            ),
            Row(
                "Breakers and ejections",
                [
                    Panel(
                        "Breaker state (0 closed, 1 half-open, 2 open)",
                        [(f"max by (endpoint) (tailguard_breaker_state{B})", "{{endpoint}}")],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Breaker transitions",
                        [
                            (
                                f"sum by (endpoint, to_state) (increase(tailguard_breaker_transitions_total{B}{RATE}))",
                                "{{endpoint}} to {{to_state}}",
                            )
                        ],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Refused by an open breaker",
                        [
                            (
                                f"sum by (endpoint) (rate(tailguard_breaker_rejections_total{B}{RATE}))",
                                "{{endpoint}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Ejected endpoints",
                        [(f"max by (backend) (tailguard_endpoints_ejected{B})", "{{backend}}")],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Ejections enforced",
                        [
                            (
                                f"sum by (reason) (increase(tailguard_ejections_total{B}{RATE}))",
                                "{{reason}}",
                            )
                        ],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Outliers detected",
                        [
                            (
                                f"sum by (reason) (increase(tailguard_outliers_detected_total{B}{RATE}))",
                                "{{reason}}",
                            )
                        ],
                        "short",
                        width=8,
                        description="Detected but not ejected (max_ejection_percent) shows here and not under enforced.",
                    ),
                ],
            ),
        ],
        [("backend", "Backend", "label_values(tailguard_upstream_attempts_total, backend)")],
    )


def canary() -> dict[str, Any]:
    req = "tailguard_requests_total"
    err = _ratio(
        f'sum by (backend) (rate({req}{{route=~"$route",code_class="5xx"}}{RATE}))',
        f"sum by (backend) (rate({req}{R}{RATE}))",
    )
    return dashboard(
        "tailguard-canary",
        "Tailguard / Canary",
        [
            Row(
                "Rollout",
                [
                    Panel(
                        "Canary weight",
                        [
                            (
                                f"max by (route, backend) (tailguard_canary_weight_percent{R})",
                                "{{route}} → {{backend}}",
                            )
                        ],
                        "percent",
                        width=12,
                    ),
                    Panel(
                        "Verdicts and operator actions",
                        [
                            (
                                f"sum by (route, action) (increase(tailguard_canary_verdicts_total{R}{RATE}))",
                                "{{route}} {{action}}",
                            )
                        ],
                        "short",
                        width=12,
                    ),
                ],
            ),
            Row(
                "Canary against baseline",
                [
                    Panel(
                        "Traffic by backend",
                        [(f"sum by (backend) (rate({req}{R}{RATE}))", "{{backend}}")],
                        "reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel("5xx ratio by backend", [(err, "{{backend}}")], "percentunit", width=8),
                    Panel(
                        "Attempt p99 by backend",
                        [
                            (
                                f"histogram_quantile(0.99, sum by (le, backend) (rate(tailguard_upstream_attempt_duration_seconds_bucket{RATE})))",
                                "{{backend}}",
                            )
                        ],
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Attempt outcomes by backend",
                        [
                            (
                                f'sum by (backend, outcome) (rate(tailguard_upstream_attempts_total{{outcome!="success"}}{RATE}))',
                                "{{backend}} {{outcome}}",
                            )
                        ],
                        "ops",
                        width=24,
                    ),
                ],
            ),
        ],
        [("route", "Route", "label_values(tailguard_canary_weight_percent, route)")],
    )


def slo_quality() -> dict[str, Any]:
    """Error budgets, the budget policy's actions, drift, shadow comparisons and contracts."""
    rq = '{route=~"$route"}'
    return dashboard(
        "tailguard-slo-quality",
        "Tailguard / SLOs and quality",
        [
            Row(
                "Error budgets",
                [
                    Panel(
                        "Budget remaining",
                        [("min by (slo) (tailguard_slo_error_budget_remaining_ratio)", "{{slo}}")],
                        "percentunit",
                        width=8,
                    ),
                    Panel(
                        "Burn rate by window",
                        [("max by (slo, window) (tailguard_slo_burn_rate)", "{{slo}} {{window}}")],
                        "short",
                        width=8,
                        thresholds=[(6.0, "orange"), (14.4, "red")],
                    ),
                    Panel(
                        "Objective and fast burn",
                        [
                            ("max by (slo) (tailguard_slo_objective_ratio)", "{{slo}} objective"),
                            ("max by (slo) (tailguard_slo_fast_burn)", "{{slo}} fast burn"),
                        ],
                        "short",
                        width=8,
                    ),
                    Panel(
                        "Good and bad events",
                        [
                            (
                                f"sum by (slo, result) (rate(tailguard_slo_events_total{rq}{RATE}))",
                                "{{slo}} {{result}}",
                            )
                        ],
                        "ops",
                        width=12,
                    ),
                    Panel(
                        "Budget policy actions",
                        [
                            (
                                f"sum by (route, action) (increase(tailguard_slo_actions_total{rq}{RATE}))",
                                "{{route}} {{action}}",
                            )
                        ],
                        "short",
                        width=12,
                    ),
                ],
            ),
            Row(
                "Drift",
                [
                    Panel(
                        "Drift score against threshold",
                        [
                            (
                                f"max by (route, backend, stat) (tailguard_drift_score{rq})",
                                "{{route}} {{backend}} {{stat}}",
                            ),
                            (
                                f"max by (route, stat) (tailguard_drift_threshold{rq})",
                                "{{route}} {{stat}} threshold",
                            ),
                        ],
                        "short",
                        width=12,
                    ),
                    Panel(
                        "Drifted features",
                        [
                            (
                                f"max by (route, backend) (tailguard_drift_features_drifted{rq})",
                                "{{route}} {{backend}}",
                            )
                        ],
                        "short",
                        width=12,
                    ),
                    Panel(
                        "Sampled, dropped and unreadable",
                        [
                            (
                                f"sum by (route) (rate(tailguard_quality_sampled_total{rq}{RATE}))",
                                "{{route}} sampled",
                            ),
                            (
                                f"sum by (route, reason) (rate(tailguard_quality_dropped_total{rq}{RATE}))",
                                "{{route}} dropped {{reason}}",
                            ),
                            (
                                f"sum by (route, problem) (rate(tailguard_quality_unreadable_total{rq}{RATE}))",
                                "{{route}} unreadable {{problem}}",
                            ),
                        ],
                        "ops",
                        width=12,
                    ),
                    Panel(
                        "Quality worker",
                        [
                            ("sum(tailguard_quality_queue_depth)", "queue depth"),
                            (f"sum(rate(tailguard_quality_worker_cpu_seconds_total{RATE}))", "CPU"),
                            (
                                f"sum by (route, source) (increase(tailguard_quality_references_total{rq}{RATE}))",
                                "references {{route}} {{source}}",
                            ),
                        ],
                        "short",
                        width=12,
                    ),
                ],
            ),
            Row(
                "Shadow traffic and contracts",
                [
                    Panel(
                        "Shadow agreement",
                        [
                            (
                                _ratio(
                                    f"sum by (route, backend) (rate(tailguard_shadow_agreed_total{rq}{RATE}))",
                                    f"sum by (route, backend) (rate(tailguard_shadow_compared_total{rq}{RATE}))",
                                ),
                                "{{route}} {{backend}}",
                            )
                        ],
                        "percentunit",
                        width=8,
                    ),
                    Panel(
                        "Shadow requests",
                        [
                            (
                                f"sum by (route, result) (rate(tailguard_shadow_requests_total{rq}{RATE}))",
                                "{{route}} {{result}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Shadow and primary p99",
                        [
                            (
                                f"histogram_quantile(0.99, sum by (le, route, side) (rate(tailguard_shadow_latency_seconds_bucket{rq}{RATE})))",
                                "{{route}} {{side}}",
                            )
                        ],
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Shadow score and token differences (p90)",
                        [
                            (
                                f"histogram_quantile(0.9, sum by (le, route) (rate(tailguard_shadow_score_difference_bucket{rq}{RATE})))",
                                "{{route}} score",
                            ),
                            (
                                f"histogram_quantile(0.9, sum by (le, route) (rate(tailguard_shadow_token_difference_bucket{rq}{RATE})))",
                                "{{route}} tokens",
                            ),
                        ],
                        "short",
                        width=12,
                    ),
                    Panel(
                        "Contract refusals and unchecked requests",
                        [
                            (
                                f"sum by (route, reason) (rate(tailguard_contract_rejections_total{rq}{RATE}))",
                                "{{route}} refused {{reason}}",
                            ),
                            (
                                f"sum by (route, reason) (rate(tailguard_contract_unchecked_total{rq}{RATE}))",
                                "{{route}} unchecked {{reason}}",
                            ),
                        ],
                        "ops",
                        width=12,
                    ),
                ],
            ),
        ],
        [("route", "Route", "label_values(tailguard_requests_total, route)")],
    )


def runtime() -> dict[str, Any]:
    """The machine and the data layers: loop lag, GC, client input, first bytes and tokens."""
    rq = '{route=~"$route"}'

    def q(metric: str, by: str = "route") -> str:
        return f"histogram_quantile(0.99, sum by (le, {by}) (rate({metric}_bucket{RATE})))"

    return dashboard(
        "tailguard-runtime",
        "Tailguard / Runtime and data",
        [
            Row(
                "Process",
                [
                    Panel("Event-loop lag p99", [(q("tailguard_event_loop_lag_seconds", "instance"), "{{instance}}")], "s", width=12),
                    Panel("GC pause p99", [(q("tailguard_gc_pause_seconds", "generation"), "gen {{generation}}")], "s", width=12),
                ],
            ),
            Row(
                "What clients send",
                [
                    Panel("Request body p99", [(q("tailguard_request_body_bytes"), "{{route}}")], "bytes", width=8),
                    Panel(
                        "Refused requests by reason",
                        [(f"sum by (route, reason) (rate(tailguard_request_validation_failures_total{rq}{RATE}))", "{{route}} {{reason}}")],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Requests by tenant",
                        [(f"sum by (tenant) (rate(tailguard_tenant_requests_total{rq}{RATE}))", "{{tenant}}")],
                        "reqps",
                        width=8,
                    ),
                    Panel(
                        "Label values folded into other",
                        [(f"sum by (label) (increase(tailguard_metric_label_folds_total{RATE}))", "{{label}}")],
                        "short",
                        width=8,
                    ),
                ],
            ),
            Row(
                "What models are sent and answer",
                [
                    Panel(
                        "KServe tensors by model, side, datatype and shape",
                        [(f"sum by (model, side, datatype, shape) (rate(tailguard_tensors_total{rq}{RATE}))", "{{model}} {{side}} {{datatype}} {{shape}}")],
                        "ops",
                        width=6,
                    ),
                    Panel("Prompt tokens p99", [(q("tailguard_prompt_tokens", "model"), "{{model}}")], "short", width=6),
                    Panel(
                        "Tokens by model and kind",
                        [(f"sum by (model, kind) (rate(tailguard_model_tokens_total{rq}{RATE}))", "{{model}} {{kind}}")],
                        "short",
                        width=6,
                    ),
                    Panel(
                        "Finish reasons by model",
                        [(f"sum by (model, reason) (rate(tailguard_model_finish_reasons_total{rq}{RATE}))", "{{model}} {{reason}}")],
                        "ops",
                        width=6,
                    ),
                ],
            ),
            Row(
                "What clients wait for",
                [
                    Panel("Time to first byte p99", [(q("tailguard_time_to_first_byte_seconds"), "{{route}}")], "s", width=8),
                    Panel("Time to first token p99", [(q("tailguard_stream_time_to_first_token_seconds"), "{{route}}")], "s", width=8),
                    Panel("Inter-token gap p99", [(q("tailguard_stream_inter_token_seconds"), "{{route}}")], "s", width=8),
                ],
            ),
        ],
        [("route", "Route", "label_values(tailguard_requests_total, route)")],
    )  # fmt: skip


DASHBOARDS = {
    "overview.json": overview,
    "route.json": route,
    "backend.json": backend,
    "canary.json": canary,
    "slo-quality.json": slo_quality,
    "runtime.json": runtime,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "deploy/grafana")
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build), encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
