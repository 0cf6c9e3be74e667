"""`tailguard loadtest` as a user runs it: a real subprocess that starts sims and a gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "loadtests" / "policies"
BODY = "{inputs: [{name: INPUT0, shape: [1, 4], datatype: FP32, data: [1, 2, 3, 4]}]}"


def loadtest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.loadtest", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_the_smoke_scenario_passes_and_writes_results_and_a_report(tmp_path: Path) -> None:
    r = loadtest("loadtests/smoke.yaml", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "smoke: PASS" in r.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["passed"] is True
    assert [p["name"] for p in results["phases"]] == ["steady", "us-east-down", "recovered"]
    down = next(p for p in results["phases"] if p["name"] == "us-east-down")
    # while us-east is dead, everything that was answered came from eu-west
    assert down["measured"]["shares"]["region"].get("us-east", 0.0) < 0.2
    assert all(v["passed"] for p in results["phases"] for v in p["verdicts"])
    assert [a["label"] for a in results["timeline"]] == [
        "kill region us-east",
        "revive region us-east",
    ]
    assert all(a["ok"] for a in results["timeline"])
    # the SLO verdict speaks of the policy's own error budget, from the gateway's counters
    spent = down["error_budget_spent"]["classify-availability"]
    assert spent is not None and 0.0 <= spent <= 0.0001
    burn = results["series"]["slo"]["classify-availability"]["burn"]
    assert len(burn) == 10 and any(b is not None for b in burn)
    assert len(results["series"]["t"]) == 10 and sum(results["series"]["sent"]) == 1000
    assert results["gateway"]["cpu_us_per_request"] > 0
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


IMPOSSIBLE = f"""\
name: impossible
sims: [{{name: a, latency: 20ms}}]
policy: {POLICIES / "hedging-off.yaml"}
warmup: 0s
traffic:
  duration: 2s
  rate: 50/s
  requests: [{{path: /v2/models/classifier/infer, body: {BODY}}}]
phases:
  - name: all
    from: 0s
    to: 2s
    slo: {{success: 50%, p50: 1ms}}
"""


def test_a_missed_slo_exits_1_and_says_which(tmp_path: Path) -> None:
    scenario = tmp_path / "impossible.yaml"
    # hedging-off names sims a and b: b answers too, so the template renders
    scenario.write_text(IMPOSSIBLE.replace("[{name: a, latency: 20ms}]",
                                           "[{name: a, latency: 20ms}, {name: b, latency: 20ms}]"))  # fmt: skip
    r = loadtest(str(scenario), "--out", str(tmp_path / "out"), "--no-report")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  p50 latency" in r.stdout
    assert "PASS  success" in r.stdout
    assert "impossible: FAIL (1 of 2 SLOs missed)" in r.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["passed"] is False
    assert not (tmp_path / "out" / "report.png").exists()


def test_a_bad_scenario_exits_2_with_file_line_and_column(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(IMPOSSIBLE.replace("rate: 50/s", "rate: fifty"))
    r = loadtest(str(scenario), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert f"{scenario}:7:9: traffic.rate: expected a rate like 100/s" in r.stderr
    assert not (tmp_path / "out").exists()


RELOAD = f"""\
name: reload
sims: [{{name: a, latency: 2ms}}, {{name: b, latency: 2ms}}]
policy: {POLICIES / "hedging-off.yaml"}
warmup: 0s
traffic:
  duration: 3s
  rate: 50/s
  requests: [{{path: /v2/models/classifier/infer, body: {BODY}}}]
timeline:
  - {{at: 1s, do: reload, policy: {POLICIES / "hedging-on.yaml"}}}
phases:
  - {{name: all, from: 0s, to: 3s, slo: {{success: 100%}}}}
"""


def test_a_reload_under_load_swaps_the_policy_without_failing_requests(tmp_path: Path) -> None:
    scenario = tmp_path / "reload.yaml"
    scenario.write_text(RELOAD)
    r = loadtest(str(scenario), "--out", str(tmp_path / "out"), "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (action,) = results["timeline"]
    assert action["ok"] is True and action["detail"].startswith("reloaded: policy ")
    served = (tmp_path / "out" / "policy.yaml").read_text()
    assert "hedging:" in served and "${sim." not in served


def test_quality_drift_detects_the_shift_the_shadow_and_the_canary(tmp_path: Path) -> None:
    # the shipped scenario is already short (10 s of traffic): run it as it is
    r = loadtest("loadtests/quality-drift.yaml", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(v["passed"] for p in results["phases"] for v in p["verdicts"])
    shift = next(a for a in results["timeline"] if a["label"] == "shift-inputs")
    assert shift["ok"] and 5.0 <= shift["done_at"] < 5.5
    # drift per feature over time: under the threshold before the shift, over it after
    q = results["series"]["quality"]
    cell = q["drift"]["classify"]["stable"]["input.INPUT0.value"]["ks"]
    before = [v for t, v in zip(q["t"], cell["values"], strict=True) if t <= 5 and v is not None]
    after = [v for t, v in zip(q["t"], cell["values"], strict=True) if t > 5 and v is not None]
    assert before and max(before) < cell["threshold"] < max(after)
    summary = results["quality"]["routes"]["classify"]
    assert 5.0 < summary["drift"]["stable"]["input.INPUT0.value"] <= 10.0
    # the shadow disagrees on 30 % of its answers
    assert abs(summary["shadow"]["agreement"] - 0.7) <= 0.05
    assert summary["shadow"]["compared"] >= 1500
    # the canary made no errors and was as fast: its outputs rolled it back
    canary = summary["canary"]
    assert canary["phase"] == "rolled-back" and canary["decided_at"] <= 4.0
    assert "output" in canary["reason"], canary
    # the text report has the same findings
    assert "quality (the first replica's admin API" in r.stdout
    assert "PASS  drift classify/stable input.INPUT0.value" in r.stdout
    assert "canary classify: rolled-back at" in r.stdout
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
def test_blue_green_switches_twice_on_two_replicas_without_a_failed_request(
    tmp_path: Path,
) -> None:
    r = loadtest("loadtests/blue-green.yaml", "--out", str(tmp_path), "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["gateway"]["replicas"]) == 2
    assert [(a["label"], a["ok"]) for a in results["timeline"]] == [
        ("switch classify to green", True),
        ("switch-back classify", True),
    ]
    totals = results["totals"]
    assert totals["requests"] == 1200 and totals["outcomes"] == {"ok": 1200}
    phases = {p["name"]: p["measured"] for p in results["phases"]}
    # wholly to one side, on both replicas, by the sims' own names
    assert phases["blue"]["shares"]["sim"] == {"blue": 1.0}
    assert phases["green"]["shares"]["sim"] == {"green": 1.0}
    assert phases["blue-again"]["shares"]["sim"] == {"blue": 1.0}
    assert (tmp_path / "gateway-2.log").exists()
