"""`tailguard sim --grpc-port` and `tailguard run --grpc-listen` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as tg

from tests.e2e.test_cli import ROOT, free_port, wait_line


def test_run_serves_grpc_through_a_grpc_sim_and_stops_cleanly(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", "0", "--grpc-port", "0",
         "--model", "classifier", "--name", "e2e-grpc"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    gw = None
    try:
        line = wait_line(sim, "listening")
        sim_grpc = line.split(" grpc ")[1].split()[0]
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"version: 1\n"
            f"gateway: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}'}}\n"
            f"backends:\n"
            f"  clf:\n"
            f"    protocol: kserve-v2\n"
            f"    endpoints: [{{grpc: '{sim_grpc}'}}]\n"
            f"routes:\n"
            f"  - name: classify\n"
            f"    match: {{model: classifier}}\n"
            f"    split: [{{backend: clf, weight: 100}}]\n"
        )
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy),
             "--grpc-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        line = wait_line(gw, "listening")
        address = line.split(" grpc ")[1].split()[0]
        client = tg.InferenceServerClient(address)
        try:
            inp = tg.InferInput("INPUT0", [1, 2], "FP32")
            inp.set_data_from_numpy(np.array([[1, 2]], dtype=np.float32))
            result = client.infer("classifier", [inp], request_id="e2e")
            assert result.as_numpy("OUTPUT0").tolist() == [[2.0, 4.0]]
            assert result.get_response().id == "e2e"
        finally:
            client.close()
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=20)
        assert gw.returncode == 0, err
    finally:
        for p in (gw, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)
