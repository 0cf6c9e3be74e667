"""The Grafana dashboards are generated, committed, importable, and query only what exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.telemetry.dashboards import DASHBOARDS, catalog_series, render, unknown_references

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
SERIES = catalog_series()


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"${var['name']}", var["definition"]))
    return out


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_json_is_what_the_generator_writes(name: str) -> None:
    committed = (GRAFANA / name).read_text(encoding="utf-8")
    assert committed == render(DASHBOARDS[name]), (
        f"deploy/grafana/{name} is stale: run python -m gateway.telemetry.dashboards deploy/grafana"
    )


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_names_only_exported_metrics_and_labels(name: str) -> None:
    board = DASHBOARDS[name]()
    found = queries(board)
    assert found
    for title, expr in found:
        assert "tailguard_" in expr, (title, expr)
        assert unknown_references(expr, SERIES) == [], (title, expr)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboards_are_importable(name: str) -> None:
    board = json.loads((GRAFANA / name).read_text(encoding="utf-8"))
    assert {"uid", "title", "panels", "schemaVersion", "templating"} <= set(board)
    assert board["uid"].startswith("tailguard-") and len(board["uid"]) <= 40
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        # every variable a query uses is defined
        for t in panel["targets"]:
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), (panel["title"], var)


def test_the_four_views_exist_and_together_cover_the_catalog() -> None:
    titles = {DASHBOARDS[n]()["title"] for n in DASHBOARDS}
    assert titles == {
        "Tailguard / Overview", "Tailguard / Route", "Tailguard / Backend and endpoints",
        "Tailguard / Canary", "Tailguard / SLOs and quality", "Tailguard / Runtime and data",
    }  # fmt: skip
    used: set[str] = set()
    for build in DASHBOARDS.values():
        used |= set(re.findall(r"tailguard_[a-z0-9_]+", json.dumps(build())))

    def base(n: str) -> str:
        return re.sub(r"_(bucket|sum|count|total|info)$", "", n)

    assert {base(n) for n in SERIES} - {base(n) for n in used} == set()


def test_the_checker_catches_what_the_gateway_does_not_export() -> None:
    assert unknown_references("rate(tailguard_requests_totl[5m])", SERIES) == [
        "unknown metric tailguard_requests_totl"
    ]
    assert unknown_references('tailguard_requests_total{region="x"}', SERIES) == [
        "tailguard_requests_total has no label region"
    ]
    assert unknown_references("sum by (tenant) (tailguard_requests_total)", SERIES) == [
        "no metric in the query has the label tenant"
    ]
    assert unknown_references("label_values(tailguard_breaker_state, route)", SERIES) == [
        "tailguard_breaker_state has no label route"
    ]
    # labels a scrape adds, and histogram buckets' le, are fine
    ok = "sum by (le, instance, worker) (rate(tailguard_request_duration_seconds_bucket[5m]))"
    assert unknown_references(ok, SERIES) == []


def test_catalog_series_reads_every_family_kind() -> None:
    assert SERIES["tailguard_requests_total"] == {"route", "backend", "code_class", "protocol"}
    assert "le" in SERIES["tailguard_request_duration_seconds_bucket"]
    assert SERIES["tailguard_requests_in_flight"] == frozenset()
    assert SERIES["tailguard_breaker_state"] == {"backend", "endpoint"}
    assert SERIES["tailguard_endpoint_info"] == {"backend", "endpoint", "region"}
    assert "sha256" in SERIES["tailguard_policy_info"]
