"""The generated Prometheus rules: their shape, and their math proven by `promtool test rules`.

The promtool tests feed synthetic counters (1,000 requests a minute) and say, to the
minute, when each alert fires and resolves; the minutes are worked out in the comments
from the alert thresholds (ratios over Prometheus' closed range [t - range, t]).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import compile_file
from gateway.slo.budget import SliKind, SloConfig
from gateway.slo.rules import (
    ALERT_NAMES,
    alert_name,
    kubernetes_rules,
    prom_duration,
    prometheus_rules,
    rules_yaml,
)
from tests.prometheus_tools import require

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "policies" / "reference.yaml"
AVAIL = 'tailguard_slo_events_total{slo="classify-availability",route="classify",result="%s"}'
LATENCY = 'tailguard_slo_events_total{slo="classify-latency",route="classify",result="%s"}'


def reference_slos() -> tuple[SloConfig, ...]:
    return compile_file(REFERENCE).slos


def test_durations_are_prometheus_durations() -> None:
    assert [prom_duration(s) for s in (300, 3600, 86400, 90, 2.5, 0.25)] == [
        "5m", "1h", "1d", "90s", "2500ms", "250ms",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        prom_duration(0.0001)


def test_rules_scale_with_the_window_and_the_test_scale() -> None:
    slo = SloConfig("s", ("a", "b"), SliKind.AVAILABILITY, 0.99, window=7 * 86400.0)
    groups = prometheus_rules([slo])["groups"]
    rules = {r.get("record") or r["alert"]: r for r in groups[0]["rules"]}
    assert "[14m]" in rules["tailguard:slo_error_ratio:rate1h"]["expr"]
    assert "[70s]" in rules["tailguard:slo_error_ratio:rate5m"]["expr"]
    page = rules["TailguardAvailabilityBudgetFastBurn"]
    assert page["labels"] == {"severity": "page", "slo": "s", "route": "a,b"}
    assert "(14.4 * 0.01)" in page["expr"] and "(6 * 0.01)" in page["expr"]
    assert (
        page["annotations"]["runbook_url"] == "docs/runbooks/TailguardAvailabilityBudgetFastBurn.md"
    )
    fast = prometheus_rules([slo], time_scale=0.01)["groups"][0]["rules"]
    assert "[8400ms]" in fast[2]["expr"]  # 1h at 7 days, a hundred times faster


def test_every_alert_name_is_known_and_has_one_per_kind_and_severity() -> None:
    emitted = {
        r["alert"]
        for g in prometheus_rules(reference_slos())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert emitted == {
        alert_name(SliKind.AVAILABILITY, s)
        for s in ("page", "ticket")  # type: ignore[arg-type]
    } | {alert_name(SliKind.LATENCY, s) for s in ("page", "ticket")}  # type: ignore[arg-type]
    assert emitted == set(ALERT_NAMES)


def test_the_committed_rule_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    """deploy/ holds the reference policy's rules (SLO alerts and quality alerts), written
    by `tailguard rules`; regenerate with the commands in deploy/README.md."""
    from gateway.cli import main

    for fmt, committed in (
        ("prometheus", ROOT / "deploy" / "prometheus" / "slo-rules.yaml"),
        ("kubernetes", ROOT / "deploy" / "kubernetes" / "slo-prometheusrule.yaml"),
    ):
        out = tmp_path / f"{fmt}.yaml"
        assert main(["rules", "policies/reference.yaml", "--format", fmt, "--out", str(out)]) == 0
        assert committed.read_text() == out.read_text()
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "slo-rules.yaml").read_text())
    groups = prom["groups"]
    assert (
        groups[: len(prometheus_rules(reference_slos())["groups"])]
        == (prometheus_rules(reference_slos())["groups"])
    )


def test_the_kubernetes_resource_holds_the_same_groups() -> None:
    slos = reference_slos()
    k = kubernetes_rules(slos, name="x")
    assert (k["apiVersion"], k["kind"], k["metadata"]["name"]) == (
        "monitoring.coreos.com/v1", "PrometheusRule", "x",
    )  # fmt: skip
    assert k["spec"]["groups"] == prometheus_rules(slos)["groups"]


def test_promtool_checks_the_generated_files(tmp_path: Path) -> None:
    promtool = require("promtool")
    kube = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "slo-prometheusrule.yaml").read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(kube["spec"]))
    for path in (ROOT / "deploy" / "prometheus" / "slo-rules.yaml", spec):
        out = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS: 20 rules found" in out.stdout  # 18 for the SLOs, 2 for quality


def _alerts(doc: dict[str, Any], name: str, severity: str, slo: str) -> list[dict[str, Any]]:
    """The one alert `name` as promtool expects it: labels and annotations as generated."""
    rule = next(
        r
        for g in doc["groups"]
        for r in g["rules"]
        if r.get("alert") == name and r["labels"]["slo"] == slo
    )
    assert rule["labels"]["severity"] == severity
    return [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]


def _series(values_good: str, values_bad: str, template: str = AVAIL) -> list[dict[str, str]]:
    return [
        {"series": template % "good", "values": values_good},
        {"series": template % "bad", "values": values_bad},
    ]


def promtool_cases(doc: dict[str, Any]) -> list[dict[str, Any]]:
    page, ticket = "TailguardAvailabilityBudgetFastBurn", "TailguardAvailabilityBudgetSlowBurn"
    a = "classify-availability"
    fires = [
        # Six hours of clean traffic (1,000 good a minute), then 10 % errors (100 bad a
        # minute) for 20 minutes. The 1h ratio passes 14.4 x 0.1 % = 1.44 % at the 9th bad
        # minute (900 / 60,900 = 1.48 %; at the 8th 800 / 60,800 = 1.32 %): the page fires
        # at 369m. The 6x pair never holds: 20 bad minutes are at most 2,000 / 362,000 =
        # 0.55 % of 6h, under 0.6 %. The ticket's 1x pair (3d and 6h above 0.1 %) holds from
        # the 4th bad minute (400 / 360,400 = 0.11 %; 300 / 360,300 = 0.08 %). The errors stop
        # at 380m: the 5m window still holds 100 bad at 384m and none at 385m, when the page
        # resolves.
        {
            "interval": "1m",
            "input_series": _series("0+1000x400", "0x360 100+100x19 2000x20"),
            "alert_rule_test": [
                {"eval_time": "363m", "alertname": ticket, "exp_alerts": []},
                {
                    "eval_time": "364m",
                    "alertname": ticket,
                    "exp_alerts": _alerts(doc, ticket, "ticket", a),
                },
                {"eval_time": "368m", "alertname": page, "exp_alerts": []},
                {
                    "eval_time": "369m",
                    "alertname": page,
                    "exp_alerts": _alerts(doc, page, "page", a),
                },
                {
                    "eval_time": "384m",
                    "alertname": page,
                    "exp_alerts": _alerts(doc, page, "page", a),
                },
                {"eval_time": "385m", "alertname": page, "exp_alerts": []},
            ],
        },
        # A steady 6 bad a minute beside 1,000 good is 5.96x: below every page threshold
        # (6x over 6h and 30m is the lowest), so no page in six hours; the ticket (3x) fires.
        {
            "interval": "1m",
            "input_series": _series("0+1000x360", "0+6x360"),
            "alert_rule_test": [
                {"eval_time": "6h", "alertname": page, "exp_alerts": []},
                {
                    "eval_time": "6h",
                    "alertname": ticket,
                    "exp_alerts": _alerts(doc, ticket, "ticket", a),
                },
            ],
        },
        # 7 bad a minute is 6.95x: just above 6x, so the 6h/30m pair pages.
        {
            "interval": "1m",
            "input_series": _series("0+1000x360", "0+7x360"),
            "alert_rule_test": [
                {"eval_time": "6h", "alertname": page, "exp_alerts": _alerts(doc, page, "page", a)},
            ],
        },
        # Nothing bad at all: no alert, ever.
        {
            "interval": "1m",
            "input_series": _series("0+1000x360", "0x360"),
            "alert_rule_test": [
                {"eval_time": "6h", "alertname": page, "exp_alerts": []},
                {"eval_time": "6h", "alertname": ticket, "exp_alerts": []},
            ],
        },
        # The latency SLO (99 %: a 1 % budget): 20 slow answers a minute beside 1,000 fast is
        # 1.96x, which only the 1x ticket over 3d and 6h sees.
        {
            "interval": "1m",
            "input_series": _series("0+1000x360", "0+20x360", LATENCY),
            "alert_rule_test": [
                {
                    "eval_time": "6h",
                    "alertname": "TailguardLatencyBudgetFastBurn",
                    "exp_alerts": [],
                },
                {
                    "eval_time": "6h",
                    "alertname": "TailguardLatencyBudgetSlowBurn",
                    "exp_alerts": _alerts(
                        doc, "TailguardLatencyBudgetSlowBurn", "ticket", "classify-latency"
                    ),
                },
            ],
        },
    ]
    return fires


def test_promtool_proves_when_alerts_fire_and_stay_silent(tmp_path: Path) -> None:
    promtool = require("promtool")
    doc = prometheus_rules(reference_slos())
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(doc))
    test = tmp_path / "rules.test.yaml"
    test.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": promtool_cases(doc)},
            sort_keys=False,
        )
    )
    out = subprocess.run(
        [promtool, "test", "rules", str(test)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness itself can fail: a page expected a minute early is refused."""
    promtool = require("promtool")
    doc = prometheus_rules(reference_slos())
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(doc))
    case = promtool_cases(doc)[0]
    page = "TailguardAvailabilityBudgetFastBurn"
    case["alert_rule_test"] = [
        {"eval_time": "368m", "alertname": page,
         "exp_alerts": _alerts(doc, page, "page", "classify-availability")},
    ]  # fmt: skip
    test = tmp_path / "wrong.test.yaml"
    test.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": [case]}))
    out = subprocess.run(
        [promtool, "test", "rules", str(test)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
