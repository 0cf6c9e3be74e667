"""`tailguard run --workers 2`: one port, one merged /metrics, a dead worker comes back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

from tests.e2e.test_cli import ROOT, free_port, wait_line

BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
).encode()


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def infer(port: int) -> int:
    req = Request(
        f"http://127.0.0.1:{port}/v2/models/classifier/infer",
        data=BODY,
        headers={"content-type": "application/json", "connection": "close"},
    )
    with urlopen(req, timeout=10) as r:
        return int(r.status)


def ready(admin: int) -> bool:
    try:
        with urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except (URLError, OSError):
        return False


def test_two_workers_share_the_port_and_one_admin_api(tmp_path: Path) -> None:
    sim_port, port, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    sup = None
    try:
        wait_line(sim, "listening")
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"version: 1\n"
            f"gateway: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}'}}\n"
            f"backends:\n"
            f"  clf: {{protocol: kserve-v2, endpoints: [{{url: 'http://127.0.0.1:{sim_port}'}}]}}\n"
            f"routes:\n"
            f"  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}\n"
        )
        sup = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy), "--workers", "2",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        wait_line(sup, "supervising 2 workers")
        deadline = time.monotonic() + 20
        while not ready(admin):
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.1)
        # a new connection each time: the kernel spreads connections over the workers
        assert all(infer(port) == 200 for _ in range(60))
        with urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        served = {
            line.split('worker="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tailguard_requests_total{")
        }
        assert set(served) == {"0", "1"} and sum(served.values()) == 60, served
        assert all(n > 0 for n in served.values())

        # kill one worker outright: the supervisor starts another, the port keeps answering
        victim = children(sup.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            kids = children(sup.pid)
            if len(kids) == 2 and victim not in kids and ready(admin):
                break
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.1)
        assert all(infer(port) == 200 for _ in range(10))

        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=30)
        assert sup.returncode == 0, err
    finally:
        for p in (sup, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)
