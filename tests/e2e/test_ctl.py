"""`tailguard status`, `tailguard ctl ...` and `tailguard hash-key` against a running gateway."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest

from gateway.auth import hash_key
from gateway.cli import main
from tests.e2e.test_cli import ROOT, free_port, tailguard, wait_line

TOKEN = "ops-token-for-the-e2e-tests"

POLICY = """\
version: 1
backends:
  stable:
    protocol: kserve-v2
    endpoints: [{{url: 'http://127.0.0.1:{sim}'}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 5}}
  candidate:
    protocol: kserve-v2
    endpoints: [{{url: 'http://127.0.0.1:{sim}'}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: stable, weight: 100}}, {{backend: candidate, weight: 0}}]
    timeout: {timeout}
    canary: {{backend: candidate, steps: [20, 100], interval: 1h}}
slos:
  classify-availability:
    routes: [classify]
    availability: {{objective: 99.9%}}
"""

BAD = """\
version: 1
backends:
  a:
    endpoints: [{url: http://127.0.0.1:1}]
routes:
  - name: r
    match: {path_prefix: /}
    split: [{backend: a, weight: 150}]
"""


@dataclass(frozen=True, slots=True)
class Running:
    admin: str
    sim_url: str
    policy: Path
    workdir: Path
    pid: int


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One simulated backend and one gateway (admin token from the environment) for the module."""
    workdir = tmp_path_factory.mktemp("ctl")
    sim_port, port, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TAILGUARD_ADMIN_TOKEN": TOKEN}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    gw = None
    try:
        wait_line(sim, "listening")
        policy = workdir / "policy.yaml"
        policy.write_text(POLICY.format(sim=sim_port, timeout="2s"))
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy), "--no-watch",
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        wait_line(gw, "listening")
        yield Running(
            f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{sim_port}", policy, workdir, gw.pid
        )
    finally:
        for p in (gw, sim):
            if p is not None:
                if p.poll() is None:
                    p.terminate()
                try:
                    p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate(timeout=10)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TAILGUARD_ADMIN_URL", raising=False)


def ctl(
    capsys: pytest.CaptureFixture[str], r: Running, *args: str, token: str | None = TOKEN
) -> tuple[int, str, str]:
    """Run the command in this process (the gateway is another one); (exit, stdout, stderr)."""
    command, rest = args[0], args[1:]
    auth = ["--token", token] if token is not None else []
    code = main([command, "--admin", r.admin, *auth, *rest])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_prints_routes_backends_and_endpoints(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = ctl(capsys, running, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"policy {running.policy} (")
    assert "ready yes" in lines[0]
    route = next(line for line in lines if line.startswith("classify "))
    assert "stable 80%, candidate 20%" in route
    assert "candidate 20% progressing" in route
    endpoints = [line.split() for line in lines if line.startswith(("stable ", "candidate "))]
    assert [e[:2] for e in endpoints] == [
        ["stable", running.sim_url],
        ["candidate", running.sim_url],
    ]
    assert endpoints[0][2] == "-"  # no gRPC address
    assert endpoints[0][4:7] == ["serving", "unchecked", "closed"]
    assert endpoints[1][6] == "none"  # no breaker configured

    code, out, _ = ctl(capsys, running, "status", "--json")
    assert code == 0 and '"routes"' in out


def test_credentials_and_addresses(
    running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = ctl(capsys, running, "status", token=None)
    assert (code, out) == (1, "")
    assert "admin credentials required" in err
    code, _, err = ctl(capsys, running, "ctl", "reload", token="wrong")
    assert code == 1 and "admin credentials required" in err
    assert TOKEN not in err

    # both come from the environment when the flags are absent
    monkeypatch.setenv("TAILGUARD_ADMIN_URL", running.admin)
    monkeypatch.setenv("TAILGUARD_ADMIN_TOKEN", TOKEN)
    assert main(["status"]) == 0
    assert "classify" in capsys.readouterr().out

    monkeypatch.delenv("TAILGUARD_ADMIN_URL")
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN")

    # the options work after the action too, and then they win
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["ctl", "--admin", dead, "reload", "--admin", running.admin, "--token", TOKEN]) == 0
    assert "applied" in capsys.readouterr().out

    # nobody listening: exit 2, and the message says where it tried
    assert main(["status", "--admin", dead]) == 2
    assert dead in capsys.readouterr().err
    assert main(["status", "--admin", "ftp://example"]) == 2
    assert "http(s)://" in capsys.readouterr().err


def test_drain_and_undrain(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    # two backends list the URL: the operator must say which
    code, _, err = ctl(capsys, running, "ctl", "drain", running.sim_url)
    assert code == 2 and "--backend" in err
    code, out, err = ctl(capsys, running, "ctl", "drain", running.sim_url, "--backend", "stable")
    assert code == 0, err
    assert out.strip() == f"{running.sim_url} of backend stable: draining"
    _, status, _ = ctl(capsys, running, "status")
    stable = next(line for line in status.splitlines() if line.startswith("stable "))
    assert "draining" in stable.split()

    code, out, _ = ctl(capsys, running, "ctl", "undrain", running.sim_url, "--backend", "stable")
    assert code == 0 and out.strip().endswith("serving")
    code, _, err = ctl(capsys, running, "ctl", "drain", "http://127.0.0.1:1")
    assert code == 1 and "no backend has the endpoint" in err


def test_policy_validate_apply_and_reload(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = running.workdir / "bad.yaml"
    bad.write_text(BAD)
    code, out, err = ctl(capsys, running, "ctl", "policy", "validate", str(bad))
    assert code == 1 and out == ""
    assert ":8:" in err and "routes[0].split[0].weight" in err

    original = running.policy.read_text()
    sim_port = running.sim_url.rsplit(":", 1)[1]
    good = running.workdir / "good.yaml"
    good.write_text(POLICY.format(sim=sim_port, timeout="3s"))
    code, out, err = ctl(capsys, running, "ctl", "policy", "validate", str(good))
    assert code == 0, err
    assert "ok" in out and "route classify changed" in out
    code, out, _ = ctl(capsys, running, "ctl", "policy", "apply", str(good), "--dry-run")
    assert code == 0 and "nothing applied (dry run)" in out

    code, out, err = ctl(capsys, running, "ctl", "policy", "apply", str(good), "--no-persist")
    assert code == 0, err
    assert "applied: route classify changed" in out
    assert running.policy.read_text() == original
    code, out, _ = ctl(capsys, running, "ctl", "policy", "apply", str(bad))
    assert code == 1

    # reload re-reads the gateway's own file: back to the original
    code, out, err = ctl(capsys, running, "ctl", "reload")
    assert code == 0, err
    assert "applied: route classify changed" in out

    code, _, err = ctl(capsys, running, "ctl", "policy", "apply", str(running.workdir / "none"))
    assert code == 2 and "cannot read" in err


def test_slo_show_override_and_clear(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ctl(capsys, running, "status")
    assert code == 0, err
    slo = next(line for line in out.splitlines() if line.startswith("classify-availability "))
    assert "availability 99.9%" in slo and "100.0%" in slo and slo.endswith("ok")
    code, out, err = ctl(capsys, running, "ctl", "slo", "show")
    assert code == 0 and out.startswith("SLO ") and "BUDGET LEFT" in out
    code, out, err = ctl(capsys, running, "ctl", "slo", "override", "classify", "--until", "1h")
    assert code == 0, err
    assert out.startswith("error-budget policy of route classify: overridden until ")
    code, out, err = ctl(capsys, running, "ctl", "slo", "clear", "classify")
    assert code == 0, err
    assert out.strip() == "error-budget policy of route classify: enforced"
    code, _, err = ctl(capsys, running, "ctl", "slo", "override", "nope", "--until", "1h")
    assert code == 1 and "route 'nope' has no SLO" in err
    code, _, err = ctl(capsys, running, "ctl", "slo", "override", "classify", "--until", "soon")
    assert code == 2 and "expected a window like 30d" in err


def test_canary_and_breaker_actions(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ctl(capsys, running, "ctl", "canary", "classify", "pause")
    assert code == 0, err
    assert out.startswith("canary of classify: pause: paused by operator at 20%")
    code, _, err = ctl(capsys, running, "ctl", "canary", "classify", "pause")
    assert code == 1 and "paused" in err
    code, out, _ = ctl(capsys, running, "ctl", "canary", "classify", "resume")
    assert code == 0 and ": resume: " in out
    code, _, err = ctl(capsys, running, "ctl", "canary", "nope", "promote")
    assert code == 1 and "route 'nope' has no canary" in err

    code, out, err = ctl(
        capsys, running, "ctl", "breaker", "reset", running.sim_url, "--backend", "stable"
    )
    assert code == 0, err
    assert out.strip() == f"breaker of {running.sim_url} (stable): closed"
    code, _, err = ctl(
        capsys, running, "ctl", "breaker", "reset", running.sim_url, "--backend", "candidate"
    )
    assert code == 1 and "no breaker" in err


def test_the_commands_as_subprocesses(running: Running) -> None:
    r = tailguard("status", "--admin", running.admin, "--token", TOKEN)
    assert r.returncode == 0, r.stderr
    assert "ROUTE" in r.stdout and "BACKEND" in r.stdout
    r = tailguard("ctl", "--admin", running.admin, "canary", "classify", "explode")
    assert r.returncode == 2  # argparse: a usage error

    r = tailguard("hash-key", "s3cret")
    assert (r.returncode, r.stdout.strip()) == (0, hash_key("s3cret"))
    piped = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key"],
        input="s3cret\n", capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert (piped.returncode, piped.stdout.strip()) == (0, hash_key("s3cret"))
    assert "s3cret" not in piped.stdout + piped.stderr
    empty = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key"],
        input="", capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert empty.returncode == 2 and "no key" in empty.stderr


def test_sighup_reloads_the_file_and_keeps_the_last_good_policy(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    def served() -> str:
        code, out, err = ctl(capsys, running, "status", "--json")
        assert code == 0, err
        return str(json.loads(out)["policy"]["sha256"])

    def after_sighup(expected: str) -> str:
        os.kill(running.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served() != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return served()

    original = running.policy.read_text()
    sim_port = running.sim_url.rsplit(":", 1)[1]
    changed = POLICY.format(sim=sim_port, timeout="4s")
    running.policy.write_text(changed)
    want = hashlib.sha256(changed.encode()).hexdigest()
    assert after_sighup(want) == want

    def rejected() -> float:
        with urlopen(f"{running.admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.search(
            r'^tailguard_policy_reloads_total\{result="rejected"\} (\S+)$', text, re.M
        )
        return float(found.group(1)) if found else 0.0

    before = rejected()
    running.policy.write_text(BAD)
    os.kill(running.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while rejected() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rejected() == before + 1
    assert served() == want

    running.policy.write_text(original)
    want = hashlib.sha256(original.encode()).hexdigest()
    assert after_sighup(want) == want
