"""SIGTERM under load on a real `python -m gateway run`: every request in flight gets its answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tests.e2e.test_cli import ROOT, free_port, wait_line

IN_FLIGHT = 30
BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
).encode()


def infer(port: int) -> int:
    req = Request(
        f"http://127.0.0.1:{port}/v2/models/classifier/infer",
        data=BODY,
        headers={"content-type": "application/json"},
    )
    try:
        with urlopen(req, timeout=20) as r:
            r.read()
            return int(r.status)
    except HTTPError as e:
        return e.code
    except (URLError, OSError):
        return 0


def in_flight(admin: int) -> int:
    with urlopen(f"http://127.0.0.1:{admin}/admin/status", timeout=5) as r:
        status = json.loads(r.read())
    return sum(e["in_flight"] for b in status["backends"] for e in b["endpoints"])


def test_sigterm_under_load_finishes_every_request_in_flight(tmp_path: Path) -> None:
    sim_port, port, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TAILGUARD_ADMIN_TOKEN", None)
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier",
         "--latency-ms", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    gw = None
    try:
        wait_line(sim, "listening")
        policy = tmp_path / "p.yaml"
        policy.write_text(
            "version: 1\n"
            "gateway: {drain_timeout: 10s}\n"
            "backends:\n"
            "  clf:\n"
            "    protocol: kserve-v2\n"
            f"    endpoints: [{{url: 'http://127.0.0.1:{sim_port}'}}]\n"
            "    pool: {max_connections: 64}\n"
            "routes:\n"
            "  - name: classify\n"
            "    match: {model: classifier}\n"
            "    split: [{backend: clf, weight: 100}]\n"
            "    timeout: 5s\n"
        )
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy),
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        wait_line(gw, "listening")
        assert infer(port) == 200  # warm: the pool and the route work

        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            futures = [pool.submit(infer, port) for _ in range(IN_FLIGHT)]
            # every request has reached the backend before the signal goes out
            deadline = time.monotonic() + 10
            while in_flight(admin) < IN_FLIGHT and time.monotonic() < deadline:
                time.sleep(0.01)
            assert in_flight(admin) == IN_FLIGHT
            gw.send_signal(signal.SIGTERM)
            statuses = [f.result() for f in futures]

        assert statuses == [200] * IN_FLIGHT
        _, err = gw.communicate(timeout=20)
        assert gw.returncode == 0, err
        assert "Traceback" not in err
        # once stopped, it accepts nothing more
        assert infer(port) == 0
    finally:
        for p in (gw, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)
