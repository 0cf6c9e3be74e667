"""The `tailguard` command as a user runs it: a real subprocess, real ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def tailguard(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> str:
    end = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited {proc.returncode}: {proc.stderr and proc.stderr.read()}"
            )
    raise AssertionError(f"no line with {needle!r}")


def test_version() -> None:
    r = tailguard("version")
    assert r.returncode == 0
    assert r.stdout.startswith("tailguard ")


def test_validate_accepts_every_shipped_policy_rules_file_and_scenario() -> None:
    files = sorted(
        str(p) for d in ("policies", "fallbacks", "loadtests") for p in (ROOT / d).glob("*.yaml")
    )
    assert len(files) >= 10
    r = tailguard("validate", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ok") == len(files)


def test_validate_checks_a_scenarios_policy_templates(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\nbackends: {a: {endpoints: [{url: '${sim.a}'}]}}\n"
        "routes: [{name: r, match: {path_prefix: /}, split: [{backend: a, weight: 100}], "
        "timeout: soon}]\n"
    )
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: s\nsims: [{name: a}]\npolicy: p.yaml\n"
        "traffic: {duration: 1s, rate: 1/s, requests: [{path: /}]}\n"
        "phases: [{name: all, from: 0s, to: 1s, slo: {success: 99%}}]\n"
    )
    r = tailguard("validate", str(scenario))
    assert r.returncode == 1
    assert "p.yaml:3:" in r.stderr and "expected a duration" in r.stderr


def test_validate_points_at_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\n"
        "backends:\n"
        "  a:\n"
        "    endpoints: [{url: http://127.0.0.1:1}]\n"
        "routes:\n"
        "  - name: r\n"
        "    match: {path_prefix: /}\n"
        "    split: [{backend: a, weight: 150}]\n"
    )
    r = tailguard("validate", str(bad))
    assert r.returncode == 1
    assert f"{bad}:8:" in r.stderr
    assert "routes[0].split[0].weight" in r.stderr


def test_schema_is_json() -> None:
    r = tailguard("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "properties" in schema


def test_run_serves_through_a_sim_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    sim_port, port, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier",
         "--region", "us-east", "--name", "e2e"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    gw = None
    try:
        wait_line(sim, "listening")
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"version: 1\n"
            f"gateway: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}'}}\n"
            f"backends:\n"
            f"  clf:\n"
            f"    protocol: kserve-v2\n"
            f"    endpoints: [{{url: 'http://127.0.0.1:{sim_port}'}}]\n"
            f"routes:\n"
            f"  - name: classify\n"
            f"    match: {{model: classifier}}\n"
            f"    split: [{{backend: clf, weight: 100}}]\n"
        )
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        wait_line(gw, "listening")
        body = json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        ).encode()
        req = Request(
            f"http://127.0.0.1:{port}/v2/models/classifier/infer",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert r.headers["x-tailguard-backend"] == "clf"
            assert r.headers["x-sim-name"] == "e2e"
        with urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=10) as r:
            assert r.status == 200
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=20)
        assert gw.returncode == 0, err
    finally:
        for p in (gw, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)  # reaps the process and closes its pipes


@pytest.mark.slow
def test_demo_runs_and_stops_by_itself() -> None:
    r = tailguard("demo", "--duration", "5", "--rate", "20", "--no-faults", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_rules_writes_prometheus_rules_and_a_prometheus_rule(tmp_path: Path) -> None:
    r = tailguard("rules", "policies/reference.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Generated by `tailguard rules` from policies/reference.yaml")
    assert "alert: TailguardAvailabilityBudgetFastBurn" in r.stdout
    out = tmp_path / "rule.yaml"
    r = tailguard("rules", "policies/reference.yaml", "--format", "kubernetes", "--out", str(out),
                  "--runbook-base", "https://runbooks.example/tailguard/")  # fmt: skip
    assert r.returncode == 0 and "20 rules" in r.stderr  # 18 SLO rules, 2 quality alerts
    text = out.read_text()
    assert "kind: PrometheusRule" in text
    assert (
        "runbook_url: https://runbooks.example/tailguard/TailguardLatencyBudgetSlowBurn.md" in text
    )
    r = tailguard("rules", "policies/reference.yaml", "--time-scale", "0.01")
    assert "[3s]" in r.stdout and "not for production" in r.stdout  # 5m a hundred times faster


def test_rules_refuses_a_policy_without_slos_or_with_mistakes(tmp_path: Path) -> None:
    r = tailguard("rules", "policies/minimal.yaml")
    assert r.returncode == 1 and "has no slos" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nbackends: {a: {endpoints: [{url: 'http://h:1'}]}}\n"
        "routes: [{name: r, match: {path_prefix: /}, split: [{backend: a, weight: 1}]}]\n"
        "slos: {s: {routes: [x], availability: {objective: 99%}}}\n"
    )
    r = tailguard("rules", str(bad))
    assert r.returncode == 1 and f"{bad}:4:" in r.stderr and "no route named 'x'" in r.stderr
    r = tailguard("rules", "policies/reference.yaml", "--time-scale", "0")
    assert r.returncode == 2
