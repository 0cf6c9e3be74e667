"""A real Triton Inference Server for the tests, from nvidia-pytriton's bundled binary.

The binary lives in a venv of its own (`.venv-triton`, or `TAILGUARD_TRITON_VENV`), because
nvidia-pytriton pins numpy < 2 while the test venv does not; `.ci/run` makes it. The server
runs the raw binary with a tiny Python-backend model repository (`classifier`: OUTPUT0 =
2 x INPUT0 and PROBS, the simulator's class probabilities, FP32), on loopback ports, with the repository API open so a test can unload a
model. Where no binary is installed the tests skip with that reason, except under CI
(`CI=true`), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """name: "classifier"
backend: "python"
max_batch_size: 0
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [-1, -1] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1, -1] },
  { name: "PROBS" data_type: TYPE_FP32 dims: [-1, -1] }
]
instance_group [{ kind: KIND_CPU count: 1 }]
"""

# The classes of the model's PROBS output; the simulator answers the same with
# `Outputs(classes=CLASSES)` (softmax over k of x[k % width], row by row).
CLASSES = 3

MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils

CLASSES = @CLASSES@


def probs(x):
    rows = x.reshape(x.shape[0] if x.ndim >= 2 and x.shape[0] > 0 else 1, -1).astype(np.float64)
    logits = rows[:, np.arange(CLASSES) % rows.shape[1]]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            tensors = [
                pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32)),
                pb_utils.Tensor("PROBS", probs(x)),
            ]
            out.append(pb_utils.InferenceResponse(tensors))
        return out
""".replace("@CLASSES@", str(CLASSES))


@dataclass
class Triton:
    http_port: int
    grpc_port: int
    process: subprocess.Popen[bytes]
    log: BinaryIO

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def repository(self, model: str, action: str) -> None:
        """Load or unload a model through Triton's repository API."""
        req = urllib.request.Request(
            f"{self.url}/v2/repository/models/{model}/{action}", data=b"", method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200

    def model_ready(self, model: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{model}/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"a real Triton is required under CI: {reason}")
    pytest.skip(reason)


def _site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    return found[0].parents[3] if found else None


def start_triton(workdir: Path) -> Triton:
    """Start a Triton with the `classifier` model; skip (or fail under CI) when there is none."""
    venv = Path(os.environ.get("TAILGUARD_TRITON_VENV") or ROOT / ".venv-triton")
    site = _site_packages(venv)
    if site is None:
        _unavailable(
            f"no tritonserver binary in {venv} (install nvidia-pytriton there: see .ci/run)"
        )
    assert site is not None
    server = site / "pytriton" / "tritonserver"
    # the stub runs the model with the venv's Python: the stub of that version
    version = site.parent.name.removeprefix("python")
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        _unavailable(f"nvidia-pytriton has no Python backend stub for Python {version}")
    backends = workdir / "backends"
    shutil.copytree(server / "backends" / "python", backends / "python")
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    repo = workdir / "repo" / "classifier"
    (repo / "1").mkdir(parents=True)
    (repo / "config.pbtxt").write_text(CONFIG)
    (repo / "1" / "model.py").write_text(MODEL)
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    # the stub links libpython dynamically: the venv's interpreter's, not the system's
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join([libdir, str(site / "nvidia_pytriton.libs")]),
        "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
    }
    argv = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={workdir / 'repo'}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1", f"--http-port={http}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--model-control-mode=explicit", "--load-model=*",
        "--exit-timeout-secs=5",
        f"--backend-config=python,shm-region-prefix-name=tailguard{os.getpid()}x{http}",
    ]  # fmt: skip
    log = (workdir / "triton.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    triton = Triton(http, grpc_port, process, log)
    deadline = time.monotonic() + 60
    while not triton.model_ready("classifier"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_triton(triton)
            tail = (workdir / "triton.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"tritonserver did not become ready:\n{tail}")
        time.sleep(0.1)
    return triton


def stop_triton(triton: Triton) -> None:
    """SIGKILL: a clean stop takes seconds (it unloads Python models); nothing here needs it."""
    if triton.process.poll() is None:
        triton.process.kill()
    triton.process.wait(timeout=10)
    triton.log.close()
