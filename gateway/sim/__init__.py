"""Simulated model servers with a fault-injection control API.

`SimServer` speaks KServe v2 (Triton's HTTP shapes), OpenAI-style chat (with
SSE streaming) and a generic JSON API on a real socket; `Faults` says what it
does wrong; `SimControl` drives one over HTTP. Used by the integration tests,
the demo, load tests and benchmarks.
"""

from __future__ import annotations

from gateway.sim.control import SimControl, SimControlError
from gateway.sim.faults import FaultDraw, FaultKind, Faults, Latency
from gateway.sim.server import SimServer, SimStats

__all__ = [
    "FaultDraw",
    "FaultKind",
    "Faults",
    "Latency",
    "SimControl",
    "SimControlError",
    "SimServer",
    "SimStats",
]
