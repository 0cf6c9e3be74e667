"""The gateway as a gRPC front for Triton: tritonclient.grpc(.aio) -> gateway -> gRPC sims.

Real sockets on port 0, real grpc.aio on both sides, the same policy language as HTTP.
Counts and ratios only, never wall times.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg_sync
import tritonclient.grpc.aio as tg
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.admin.server import status_of
from gateway.app import Gateway
from gateway.resilience.breaker import BreakerState
from gateway.sim import Faults, SimServer

MakeSim = Callable[..., Awaitable[SimServer]]
KSERVE_RULES = Path(__file__).resolve().parents[2] / "fallbacks" / "kserve-v2.yaml"
MakeGateway = Callable[[str], Awaitable[Gateway]]


@pytest.fixture
async def sims() -> AsyncIterator[MakeSim]:
    started: list[SimServer] = []

    async def make(**kw: Any) -> SimServer:
        kw.setdefault("seed", 2000 + len(started))
        kw.setdefault("grpc_port", 0)
        kw.setdefault("name", f"sim{len(started)}")
        s = SimServer(**kw)
        await s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        await s.stop()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[MakeGateway]:
    started: list[Gateway] = []

    async def make(policy: str) -> Gateway:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(textwrap.dedent(policy))
        gw = Gateway(
            path,
            listen=("127.0.0.1", 0),
            admin_listen=("127.0.0.1", 0),
            grpc_listen=("127.0.0.1", 0),
        )
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


def address(gw: Gateway) -> str:
    assert gw.listening is not None
    return gw.listening.grpc_address


def tensor(values: list[float]) -> tg.InferInput:
    inp = tg.InferInput("INPUT0", [1, len(values)], "FP32")
    inp.set_data_from_numpy(np.array([values], dtype=np.float32))
    return inp


def infer_request(model: str, values: list[float], rid: str, **params: Any) -> Any:
    req = pb.ModelInferRequest(model_name=model, id=rid)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, len(values)])
    req.raw_input_contents.append(np.array(values, dtype=np.float32).tobytes())
    for k, v in params.items():
        if isinstance(v, bool):
            req.parameters[k].bool_param = v
        else:
            req.parameters[k].int64_param = v
    return req


def served(*sims: SimServer) -> int:
    return sum(s.stats.by_model["classifier"] for s in sims)


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """For state with nothing to await (health verdicts): poll until true or fail."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


ONE = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 5, failure_rate: 50%, open_for: 10s}}
    outlier_detection: {{consecutive_failures: 3, base_ejection: 10s}}
routes:
  - name: classify
    match: {{path_prefix: /v2/models/}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
"""


async def test_infer_with_binary_tensors_through_the_gateway(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"], name="a")
    gw = await gateway(ONE.format(a=a.grpc_address))
    async with tg.InferenceServerClient(address(gw)) as client:
        assert await client.is_model_ready("classifier")
        meta = await client.get_model_metadata("classifier", as_json=True)
        assert meta["name"] == "classifier"
        for i in range(5):
            r = await client.infer("classifier", [tensor([1, 2, 3, float(i)])], request_id=f"r{i}")
            assert r.as_numpy("OUTPUT0").tolist() == [[2, 4, 6, 2 * i]]
            assert r.get_response().id == f"r{i}"
    # the sync client too, and the gateway's facts in the answer's metadata
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request("classifier", [1.0], "m"), metadata=(("x-request-id", "trace-1"),)
        )
        await call
        md = dict(await call.trailing_metadata())
    assert md["x-request-id"] == "trace-1"
    assert md["x-tailguard-backend"] == "clf" and md["x-tailguard-route"] == "classify"
    assert md["x-sim-name"] == "a"  # the backend's own metadata pass through
    client_sync = tg_sync.InferenceServerClient(address(gw))
    try:
        r = await asyncio.to_thread(client_sync.infer, "classifier", [tensor([5.0])])
        assert r.as_numpy("OUTPUT0").tolist() == [[10.0]]
    finally:
        client_sync.close()
    assert served(a) == 7
    # counted with the HTTP ones, told apart by protocol; the status shows the gRPC address
    m = gw.metrics.registry.get_sample_value
    labels = {"route": "classify", "backend": "clf", "code_class": "2xx"}
    assert m("tailguard_requests_total", {**labels, "protocol": "grpc"}) == 9
    assert m("tailguard_requests_total", {**labels, "protocol": "http"}) is None
    endpoint = status_of(gw)["backends"][0]["endpoints"][0]
    assert endpoint["url"] == f"grpc://{a.grpc_address}" and endpoint["grpc"] == a.grpc_address


async def test_unknown_model_is_the_clients_error_and_trips_nothing(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"])
    gw = await gateway(ONE.format(a=a.grpc_address))
    async with tg.InferenceServerClient(address(gw)) as client:
        for _ in range(12):
            with pytest.raises(InferenceServerException) as e:
                await client.infer("nope", [tensor([1.0])])
            assert e.value.status() == "StatusCode.NOT_FOUND"
            assert "unknown model: 'nope'" in str(e.value.message())
        r = await client.infer("classifier", [tensor([1.0])])
        assert r.as_numpy("OUTPUT0").tolist() == [[2.0]]
    state = gw.snapshot.backends["clf"].states[0]
    assert state.breaker is not None and state.breaker.state(gw.clock.now()) is BreakerState.CLOSED
    outlier = gw.snapshot.backends["clf"].outlier
    assert outlier is not None and not outlier.ejected(gw.clock.now())
    text = gw.metrics.registry.get_sample_value(
        "tailguard_upstream_attempts_total",
        {"backend": "clf", "endpoint": f"grpc://{a.grpc_address}", "outcome": "client_error"},
    )
    assert text == 12


async def test_gateway_errors_are_grpc_statuses_with_the_request_id(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"])
    gw = await gateway(
        ONE.format(a=a.grpc_address).replace("path_prefix: /v2/models/", "model: classifier")
    )
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ModelInfer(
                infer_request("other", [1.0], "x"), metadata=(("x-request-id", "q-9"),)
            )
        assert e.value.code() is grpc.StatusCode.NOT_FOUND
        assert "no route matches" in (e.value.details() or "")
        trailers = dict(e.value.trailing_metadata() or ())
        assert trailers["x-request-id"] == "q-9"
        assert trailers["x-tailguard-error"] == "route_not_found"
        # bytes that are not a ModelInferRequest: a clear INVALID_ARGUMENT, nothing forwarded
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await raw(b"\x0a\x05ab")
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        await a.die()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ModelInfer(infer_request("classifier", [1.0], "y"))
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "tailguard upstream_failed" in (e.value.details() or "")
    assert a.stats.total == 0


TWO_REGIONS = """
version: 1
gateway: {{region: us-east}}
backends:
  clf:
    protocol: kserve-v2
    endpoints:
      - {{grpc: "{a}", region: us-east}}
      - {{grpc: "{b}", region: eu-west}}
    health: {{interval: 50ms, idle_interval: 50ms, timeout: 200ms,
              unhealthy_threshold: 1, healthy_threshold: 1}}
    outlier_detection: {{consecutive_failures: 3, base_ejection: 1s, max_ejection_percent: 50%}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 3, per_try_timeout: 500ms, non_idempotent: true,
               backoff: {{base: 1ms, max: 5ms}}}}
"""


async def fire(addr: str, n: int, concurrency: int = 8, model: str = "classifier") -> list[str]:
    """n infers, at most `concurrency` at a time; the status of each ("OK" or the code name)."""
    sem = asyncio.Semaphore(concurrency)
    async with tg.InferenceServerClient(addr) as client:

        async def one(i: int) -> str:
            async with sem:
                try:
                    await client.infer(model, [tensor([float(i)])])
                    return "OK"
                except InferenceServerException as e:
                    return str(e.status()).removeprefix("StatusCode.")

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_region_failover_and_back_with_grpc_only_endpoints_checked_over_grpc(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"], region="us-east", name="a")
    b = await sims(models=["classifier"], region="eu-west", name="b")
    gw = await gateway(TWO_REGIONS.format(a=a.grpc_address, b=b.grpc_address))
    addr = address(gw)
    assert (await fire(addr, 40)).count("OK") == 40
    assert served(a) == 40 and served(b) == 0  # local first

    traffic = asyncio.ensure_future(fire(addr, 300, concurrency=4))
    await eventually(lambda: served(a, b) >= 80 or traffic.done())
    await a.die()
    during = await traffic
    assert during.count("OK") == len(during), [s for s in during if s != "OK"][:5]
    state_a = gw.snapshot.backends["clf"].states[0]
    assert state_a.health is not None
    await eventually(lambda: not state_a.health.healthy)  # type: ignore[union-attr]
    seen_a = a.stats.total
    assert (await fire(addr, 40)).count("OK") == 40
    assert a.stats.total == seen_a  # nothing more goes to the dead region

    # health over gRPC: a model that is not ready makes the endpoint unhealthy too
    await a.revive()
    await eventually(lambda: state_a.health.healthy)  # type: ignore[union-attr]
    before = served(a)
    assert (await fire(addr, 40)).count("OK") == 40
    assert served(a) - before == 40  # local again
    a.faults = Faults(unready_models=frozenset({"classifier"}))
    await eventually(lambda: not state_a.health.healthy)  # type: ignore[union-attr]
    before_b = served(b)
    assert (await fire(addr, 20)).count("OK") == 20
    assert served(b) - before_b == 20


HEDGED = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}, {{grpc: "{b}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 5s
    idempotent: true
    hedging: {{delay: 30ms, max_extra: 1, budget: 50%}}
"""


async def test_hedging_answers_the_latency_tail_from_the_other_endpoint(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    slow = Faults.from_dict({"latency": {"kind": "fixed", "ms": 400}})
    a = await sims(models=["classifier"], name="a", faults=slow)
    b = await sims(models=["classifier"], name="b", faults=slow)
    gw = await gateway(HEDGED.format(a=a.grpc_address, b=b.grpc_address))
    addr = address(gw)
    # one endpoint is slow and the other fast, whichever the balancer picks first
    b.faults = Faults()
    n = 40
    results = await fire(addr, n, concurrency=4)
    assert results.count("OK") == n
    reg = gw.metrics.registry
    sent = reg.get_sample_value("tailguard_hedges_sent_total", {"route": "classify"}) or 0
    won = reg.get_sample_value("tailguard_hedges_won_total", {"route": "classify"}) or 0
    # every request was answered by the fast endpoint, once: directly, or by a hedge when the
    # balancer had sent its first attempt to the slow one
    assert served(b) == n
    # each first attempt the balancer gave the slow endpoint was overtaken by its hedge (how
    # many it gives depends on the balancer's latency estimate, not on hedging: at least one)
    assert won == served(a) >= 1
    assert won <= sent <= n  # at most one hedge per request (max_extra: 1)


HANG = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}, {{grpc: "{b}"}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 4, failure_rate: 50%, open_for: 30s,
                      half_open_calls: 2}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 2, per_try_timeout: 300ms, non_idempotent: true, budget: 100%,
               backoff: {{base: 1ms, max: 2ms}}}}
"""


async def test_a_hanging_endpoint_opens_its_breaker(sims: MakeSim, gateway: MakeGateway) -> None:
    a = await sims(models=["classifier"], name="a", faults=Faults(hang_rate=1.0))
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(HANG.format(a=a.grpc_address, b=b.grpc_address))
    # one at a time, so the balancer has no in-flight counts to steer by: a fair share of first
    # attempts goes to the hanging endpoint until its breaker opens
    results = await fire(address(gw), 60, concurrency=1)
    assert results.count("OK") == 60  # every hang was retried on the healthy endpoint
    state_a = gw.snapshot.backends["clf"].states[0]
    assert state_a.breaker is not None
    assert state_a.breaker.state(gw.clock.now()) is BreakerState.OPEN
    assert a.stats.faults["hang"] <= 10  # the breaker stopped sending it more
    assert served(b) == 60


SEQUENCES = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}, {{grpc: "{b}"}}, {{grpc: "{c}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 3, per_try_timeout: 200ms, non_idempotent: true,
               on: [connect-failure, reset, timeout, 5xx]}}
    idempotent: true
    hedging: {{delay: 1ms, max_extra: 2, budget: 100%}}
"""


async def test_sequence_requests_are_never_duplicated_and_stick_to_one_endpoint(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    flaky = Faults.from_dict({"error_rate": 0.3, "error_status": 503})
    s = [await sims(models=["classifier"], name=f"s{i}", faults=flaky) for i in range(3)]
    gw = await gateway(
        SEQUENCES.format(a=s[0].grpc_address, b=s[1].grpc_address, c=s[2].grpc_address)
    )
    sent = 0
    failed = 0
    async with tg.InferenceServerClient(address(gw)) as client:
        for seq in range(1, 13):
            for step in range(5):
                sent += 1
                try:
                    await client.infer(
                        "classifier",
                        [tensor([float(step)])],
                        sequence_id=seq,
                        sequence_start=step == 0,
                        sequence_end=step == 4,
                    )
                except InferenceServerException as e:
                    assert e.status() == "StatusCode.UNAVAILABLE"  # passed on, not retried
                    failed += 1
    per_sequence: dict[str, list[int]] = {}
    for sim in s:
        for seq, count in sim.stats.by_sequence.items():
            per_sequence.setdefault(seq, []).append(count)
    assert len(per_sequence) == 12
    # each sequence reached exactly one endpoint, each request exactly once
    assert all(len(counts) == 1 and counts[0] == 5 for counts in per_sequence.values())
    assert failed > 0  # faults happened, and none was retried or hedged
    assert sum(sim.stats.by_model["classifier"] for sim in s) == sent
    # plain requests on the same route are still retried and hedged
    before = sum(sim.stats.by_model["classifier"] for sim in s)
    assert (await fire(address(gw), 30)).count("OK") >= 27
    assert sum(sim.stats.by_model["classifier"] for sim in s) - before > 30


STREAM = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
routes:
  - name: stream
    match: {{model: streamer}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
"""


async def collect(
    stub: Any, requests: Any, **kw: Any
) -> tuple[list[tuple[str, list[float]]], list[str]]:
    got: list[tuple[str, list[float]]] = []
    errors: list[str] = []
    async for m in stub.ModelStreamInfer(requests, **kw):
        if m.error_message:
            errors.append(m.error_message)
            continue
        r = m.infer_response
        values = (
            np.frombuffer(r.raw_output_contents[0], np.float32).tolist()
            if r.raw_output_contents
            else []
        )
        got.append((r.id, values))
    return got, errors


async def test_streaming_infer_end_to_end_and_a_break_mid_stream(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier", "streamer"], decoupled=["streamer"])
    gw = await gateway(STREAM.format(a=a.grpc_address))

    async def requests() -> AsyncIterator[Any]:
        yield infer_request("streamer", [1, 2, 3], "a", triton_enable_empty_final_response=True)
        yield infer_request("classifier", [4.0], "b")
        yield infer_request("nope", [4.0], "c")

    async with grpc.aio.insecure_channel(address(gw)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        got, errors = await collect(stub, requests())
        assert got == [("a", [2.0]), ("a", [4.0]), ("a", [6.0]), ("a", []), ("b", [8.0])]
        assert len(errors) == 1 and "unknown model" in errors[0]

        # the tritonclient aio stream API through the gateway
        async with tg.InferenceServerClient(address(gw)) as client:

            async def more() -> AsyncIterator[dict[str, Any]]:
                for i in range(3):
                    yield {"model_name": "classifier", "inputs": [tensor([float(i)])]}

            outs = [r.as_numpy("OUTPUT0").tolist() async for r, err in client.stream_infer(more())]
            assert outs == [[[0.0]], [[2.0]], [[4.0]]]

        # a backend that breaks mid-stream: the client's stream ends UNAVAILABLE, no retry
        a.faults = Faults(stream_delay_ms=200)
        seen = a.stats.by_model["streamer"]
        call = stub.ModelStreamInfer(iter([infer_request("streamer", [1, 2, 3, 4], "d")]))
        first = await call.read()
        assert first.infer_response.id == "d"
        await a.die()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "stream_aborted" in (e.value.details() or "")
        assert a.stats.by_model["streamer"] == seen + 1
    m = gw.metrics.registry.get_sample_value
    ep = f"grpc://{a.grpc_address}"
    assert (
        m(
            "tailguard_upstream_attempts_total",
            {"backend": "clf", "endpoint": ep, "outcome": "success"},
        )
        == 2
    )
    failed = [
        m("tailguard_upstream_attempts_total", {"backend": "clf", "endpoint": ep, "outcome": o})
        or 0
        for o in ("5xx", "reset")
    ]
    assert sum(failed) == 1


async def test_reload_mid_stream_keeps_the_stream_and_new_streams_use_the_new_policy(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(STREAM.format(a=a.grpc_address))
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def requests() -> AsyncIterator[Any]:
        while (r := await queue.get()) is not None:
            yield r

    async with grpc.aio.insecure_channel(address(gw)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(requests())
        await queue.put(infer_request("classifier", [1.0], "1"))
        assert (await call.read()).infer_response.id == "1"
        result = await gw.reload(STREAM.format(a=b.grpc_address), actor="test")
        assert result.applied
        for i in range(2, 5):
            await queue.put(infer_request("classifier", [float(i)], str(i)))
            assert (await call.read()).infer_response.id == str(i)
        await queue.put(None)
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
        got, _ = await collect(stub, iter([infer_request("classifier", [1.0], "new")]))
        assert got == [("new", [2.0])]
    assert served(a) == 4 and served(b) == 1


DEADLINE = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: {timeout}
"""


async def test_deadlines_the_clients_and_the_routes(sims: MakeSim, gateway: MakeGateway) -> None:
    a = await sims(
        models=["classifier"], faults=Faults.from_dict({"latency": {"kind": "fixed", "ms": 3000}})
    )
    gw = await gateway(DEADLINE.format(a=a.grpc_address, timeout="10s"))
    async with tg.InferenceServerClient(address(gw)) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor([1.0])], client_timeout=0.2)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # the backend's call was cancelled with the client's: nothing is left in flight
    await eventually(lambda: a.stats.in_flight == 0)
    gw2 = await gateway(DEADLINE.format(a=a.grpc_address, timeout="200ms"))
    async with tg.InferenceServerClient(address(gw2)) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor([1.0])], client_timeout=30)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "tailguard deadline_exceeded" in str(e.value.message())


AUTH = """
version: 1
auth:
  keys:
    - {{id: app, tenant: t1, hash: "{hash}"}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
"""


async def test_auth_refused_before_anything_reaches_a_backend(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    import hashlib

    a = await sims(models=["classifier"])
    key = "s3cret-key-for-tests"
    gw = await gateway(
        AUTH.format(a=a.grpc_address, hash="sha256:" + hashlib.sha256(key.encode()).hexdigest())
    )
    async with tg.InferenceServerClient(address(gw)) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor([1.0])])
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor([1.0])], headers={"x-api-key": "wrong"})
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        assert a.stats.total == 0
        r = await client.infer("classifier", [tensor([1.0])], headers={"x-api-key": key})
        assert r.as_numpy("OUTPUT0").tolist() == [[2.0]]
    assert a.stats.total == 1


CACHED = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
  backup:
    protocol: kserve-v2
    endpoints: [{{grpc: "{b}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    cache: {{ttl: 0s, stale_if_error: 1h}}
    fallback:
      - cache: true
      - {{backend: backup, timeout: 500ms}}
"""


async def test_fallbacks_stale_cache_then_backup_backend(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(CACHED.format(a=a.grpc_address, b=b.grpc_address))
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(infer_request("classifier", [3.0], "first"))
        await a.die()
        call = stub.ModelInfer(infer_request("classifier", [3.0], "second"))
        reply = await call
        md = dict(await call.trailing_metadata())
        assert md["x-tailguard-fallback"] == "cache"
        assert reply.id == "second"  # the cached answer names the request it now answers
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [6.0]
        # not in the cache: the backup backend answers
        call = stub.ModelInfer(infer_request("classifier", [7.0], "third"))
        reply = await call
        md = dict(await call.trailing_metadata())
        assert md["x-tailguard-fallback"] == "backend"
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [14.0]
    assert served(b) == 1


RULES = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
routes:
  - name: classify
    match: {{path_prefix: /v2/models/}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
    fallback:
      - rules: {rules}
"""


async def test_a_rules_fallback_answers_a_model_infer_response_tritonclient_reads(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"])
    gw = await gateway(RULES.format(a=a.grpc_address, rules=KSERVE_RULES))
    await a.die()
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request("classifier", [1.0, 2.0], "deg-1")
        )
        reply = await call
        md = dict(await call.trailing_metadata())
    assert md["x-tailguard-fallback"] == "rules"
    assert md["x-tailguard-fallback-rule"] == "kserve-infer-degraded"
    assert reply.id == "deg-1" and reply.model_version == "fallback"
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [0.0]
    async with tg.InferenceServerClient(address(gw)) as client:
        r = await client.infer("classifier", [tensor([1.0])], request_id="deg-2")
        assert r.as_numpy("OUTPUT0").tolist() == [[0.0]]
        # a rule that answers an error answers it as a gRPC status
        with pytest.raises(InferenceServerException) as e:
            await client.get_model_metadata("classifier")
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert "fallback_rule" in str(e.value.message())


SPLIT = """
version: 1
backends:
  one:
    protocol: kserve-v2
    endpoints: [{{grpc: "{a}"}}]
  two:
    protocol: kserve-v2
    endpoints: [{{grpc: "{b}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: one, weight: 50}}, {{backend: two, weight: 50}}]
    sticky: {{header: x-user-id}}
    timeout: 1s
"""


async def test_a_weighted_split_is_sticky_by_a_metadata_key(
    sims: MakeSim, gateway: MakeGateway
) -> None:
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(SPLIT.format(a=a.grpc_address, b=b.grpc_address))
    seen: dict[str, set[str]] = {}
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for user in range(20):
            for i in range(3):
                call = stub.ModelInfer(
                    infer_request("classifier", [1.0], f"{user}-{i}"),
                    metadata=(("x-user-id", f"user-{user}"),),
                )
                await call
                md = dict(await call.trailing_metadata())
                seen.setdefault(f"user-{user}", set()).add(str(md["x-sim-name"]))
    assert all(len(sides) == 1 for sides in seen.values())  # each user stays on one side
    assert {s for sides in seen.values() for s in sides} == {"a", "b"}  # and both have users
    assert served(a) + served(b) == 60
