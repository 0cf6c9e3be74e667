"""Drift alert rules: generated from the policy, checked and exercised by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.app import compile_text
from gateway.quality.rules import drift_alert_rules

POLICY = """\
version: 1
backends:
  v1: {protocol: kserve-v2, endpoints: [{url: "http://127.0.0.1:1"}]}
routes:
  - name: classify
    match: {path_prefix: /v2/}
    split: [{backend: v1, weight: 100}]
    quality: {sample: 5%, window: 10m, thresholds: {psi: 0.3, ks: 0.15, js: 0.05}}
  - name: plain
    match: {path_prefix: /}
    split: [{backend: v1, weight: 100}]
"""
PROMTOOL = shutil.which("promtool")


def rules() -> list[dict[str, object]]:
    return drift_alert_rules(compile_text(POLICY, "p.yaml").routes)


def test_one_drift_alert_per_quality_route_with_the_routes_thresholds() -> None:
    out = rules()
    assert [r["alert"] for r in out] == ["TailguardDataDrift", "TailguardQualityQueueDropping"]
    drift = out[0]
    assert drift["expr"] == (
        'tailguard_drift_score{route="classify",stat="psi"} > 0.3 or '
        'tailguard_drift_score{route="classify",stat="ks"} > 0.15 or '
        'tailguard_drift_score{route="classify",stat="js"} > 0.05'
    )
    assert drift["for"] == "20m"  # two windows
    assert (
        drift_alert_rules(
            compile_text(
                POLICY.split("  - name: classify")[0]
                + POLICY.split("    quality:")[1].split("\n", 1)[1],
                "q.yaml",
            ).routes
        )
        == []
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus package) not installed")
def test_promtool_accepts_the_rules_and_the_alert_fires_on_drift(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    path = tmp_path / "quality.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "tailguard-quality", "rules": rules()}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    labels = 'route="classify",backend="v1",feature="output.PROBS.class"'
    test = {
        "rule_files": [str(path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # js drifts from minute 10 on; ks stays under its threshold throughout
                    {"series": f'tailguard_drift_score{{{labels},stat="js"}}', "values": "0.01x9 0.2x40"},
                    {"series": f'tailguard_drift_score{{{labels},stat="ks"}}', "values": "0.1x49"},
                ],
                "alert_rule_test": [
                    {"eval_time": "25m", "alertname": "TailguardDataDrift", "exp_alerts": []},
                    {
                        "eval_time": "31m",
                        "alertname": "TailguardDataDrift",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "ticket", "route": "classify", "backend": "v1",
                                    "feature": "output.PROBS.class", "stat": "js",
                                },
                                "exp_annotations": {
                                    "summary": "output.PROBS.class of route classify on backend v1 drifted from its reference (js = 0.200)",
                                    "description": rules()[0]["annotations"]["description"],  # type: ignore[index]
                                    "runbook_url": "docs/runbooks/TailguardDataDrift.md",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }  # fmt: skip
    tests = tmp_path / "quality.test.yml"
    tests.write_text(yaml.safe_dump(test))
    run = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
