"""The gateway's gRPC front against a real Triton Inference Server (nvidia-pytriton's binary).

The simulator copies Triton's answers; these tests check them against the real server:
binary tensors through the gateway, Triton's client errors passed on without tripping
anything, and a model unloaded on one endpoint noticed by the gRPC health check
(`ModelReady`), its traffic moving to the other endpoint and coming back when it loads.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as tg
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.resilience.breaker import BreakerState
from gateway.sim import SimServer
from gateway.sim.outputs import Outputs
from tests.triton_server import CLASSES, Triton, start_triton, stop_triton


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    server = start_triton(tmp_path_factory.mktemp("triton"))
    yield server
    stop_triton(server)


def tensor(values: list[float], datatype: str = "FP32") -> tg.InferInput:
    arr = np.array([values], dtype=np.float32 if datatype == "FP32" else np.int32)
    inp = tg.InferInput("INPUT0", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


POLICY = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints:
      - {{grpc: "{triton}", region: local}}
      - {{grpc: "{sim}", region: other}}
    health: {{interval: 50ms, idle_interval: 50ms, timeout: 500ms,
              unhealthy_threshold: 1, healthy_threshold: 1}}
    circuit_breaker: {{window_calls: 10, minimum_calls: 3, failure_rate: 50%, open_for: 30s}}
routes:
  - name: classify
    match: {{path_prefix: /v2/models/}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 5s
"""


@pytest.fixture
async def setup(triton: Triton, tmp_path: Path) -> AsyncIterator[tuple[Gateway, SimServer]]:
    sim = SimServer(
        models=["classifier"],
        grpc_port=0,
        region="other",
        name="sim",
        outputs=Outputs(classes=CLASSES),
    )
    await sim.start()
    path = tmp_path / "policy.yaml"
    path.write_text(
        textwrap.dedent(POLICY.format(triton=triton.grpc_address, sim=sim.grpc_address))
    )
    gw = Gateway(
        path, listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0), grpc_listen=("127.0.0.1", 0)
    )
    await gw.start()
    yield gw, sim
    await gw.stop()
    await sim.stop()
    if not triton.model_ready("classifier"):
        triton.repository("classifier", "load")


def address(gw: Gateway) -> str:
    assert gw.listening is not None
    return gw.listening.grpc_address


async def test_infer_and_tritons_own_errors_through_the_gateway(
    setup: tuple[Gateway, SimServer],
) -> None:
    gw, sim = setup
    async with tg.InferenceServerClient(address(gw)) as client:
        for i in range(10):
            r = await client.infer("classifier", [tensor([1.0, float(i)])], request_id=f"t{i}")
            assert r.as_numpy("OUTPUT0").tolist() == [[2.0, 2.0 * i]]
            assert r.get_response().id == f"t{i}"
        assert sim.stats.by_model["classifier"] == 0  # the local region: the real Triton
        for _ in range(5):
            with pytest.raises(InferenceServerException) as e:
                await client.infer("nope", [tensor([1.0])])
            assert e.value.status() == "StatusCode.NOT_FOUND"
            assert "Request for unknown model: 'nope' is not found" in str(e.value.message())
            with pytest.raises(InferenceServerException) as e:
                await client.infer("classifier", [tensor([1], "INT32")])
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "expects 'FP32'" in str(e.value.message())
    state = gw.snapshot.backends["clf"].states[0]
    assert state.breaker is not None
    assert state.breaker.state(gw.clock.now()) is BreakerState.CLOSED
    m = gw.metrics.registry.get_sample_value
    endpoint = state.spec.url
    assert (
        m(
            "tailguard_upstream_attempts_total",
            {"backend": "clf", "endpoint": endpoint, "outcome": "client_error"},
        )
        == 10
    )
    assert sim.stats.by_kind["infer"] == 0  # nothing retried elsewhere


async def test_the_simulator_answers_the_outputs_triton_answers(
    setup: tuple[Gateway, SimServer], triton: Triton
) -> None:
    _gw, sim = setup
    values = [[1.0, -2.0, 0.5, 3.0], [0.0, 0.25, -1.0, 2.0]]
    arr = np.array(values, dtype=np.float32)
    inp = tg.InferInput("INPUT0", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    answers = []
    for where in (triton.grpc_address, sim.grpc_address):
        async with tg.InferenceServerClient(where) as client:
            answers.append(await client.infer("classifier", [inp], request_id="same"))
    real, simulated = (a.get_response() for a in answers)
    assert [(o.name, o.datatype, list(o.shape)) for o in simulated.outputs] == [
        (o.name, o.datatype, list(o.shape)) for o in real.outputs
    ]
    assert [o.name for o in real.outputs] == ["OUTPUT0", "PROBS"]
    assert (real.model_name, real.id) == (simulated.model_name, simulated.id)
    for name in ("OUTPUT0", "PROBS"):
        assert np.allclose(answers[0].as_numpy(name), answers[1].as_numpy(name), rtol=1e-5)


async def test_a_model_unloaded_on_triton_moves_traffic_by_grpc_health_check(
    setup: tuple[Gateway, SimServer], triton: Triton
) -> None:
    gw, sim = setup
    state = gw.snapshot.backends["clf"].states[0]
    assert state.health is not None
    triton.repository("classifier", "unload")
    for _ in range(200):  # the health verdict has nothing to await
        if not state.health.healthy:
            break
        await asyncio.sleep(0.02)
    assert not state.health.healthy
    async with tg.InferenceServerClient(address(gw)) as client:
        for _ in range(10):
            r = await client.infer("classifier", [tensor([3.0])])
            assert r.as_numpy("OUTPUT0").tolist() == [[6.0]]
        assert sim.stats.by_model["classifier"] == 10
        triton.repository("classifier", "load")
        for _ in range(300):
            if state.health.healthy:
                break
            await asyncio.sleep(0.02)
        assert state.health.healthy
        for _ in range(10):
            await client.infer("classifier", [tensor([3.0])])
    assert sim.stats.by_model["classifier"] == 10  # back on Triton
