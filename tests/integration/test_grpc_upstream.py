"""The gRPC upstream transport against simulated gRPC backends: raw bytes, statuses, outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from gateway.errors import AttemptFailed
from gateway.policy.compile import EndpointSpec, PoolSpec
from gateway.proxy.grpc_upstream import GrpcCallFailed, GrpcTransport
from gateway.resilience.outcome import Outcome
from gateway.sim import Faults, SimServer

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
POOL = PoolSpec(max_connections=8, connect_timeout=1.0, idle_timeout=30.0)


def request(model: str, values: list[float], rid: str = "r") -> bytes:
    req = pb.ModelInferRequest(model_name=model, id=rid)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, len(values)])
    req.raw_input_contents.append(np.array(values, dtype=np.float32).tobytes())
    return bytes(req.SerializeToString())


def transport(address: str) -> GrpcTransport:
    spec = EndpointSpec(f"b/grpc://{address}", "b", f"grpc://{address}", "r", 1, False, address)
    return GrpcTransport(spec, POOL, address)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    s = SimServer(models=["classifier", "streamer"], decoupled=["streamer"], grpc_port=0, seed=3)
    await s.start()
    yield s
    await s.stop()


async def test_unary_bytes_pass_through_with_metadata(sim: SimServer) -> None:
    t = transport(sim.grpc_address)
    try:
        r = await t.unary(INFER, request("classifier", [1, 2]), (("x-request-id", "q1"),), 2.0)
        assert r.outcome is Outcome.SUCCESS and r.code == "OK" and r.status == 200
        reply = pb.ModelInferResponse.FromString(r.body)
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2, 4]
        assert dict(r.trailers)["x-sim-name"] == sim.name
    finally:
        await t.close()


async def test_statuses_the_backend_sent_are_answers_with_their_outcome(sim: SimServer) -> None:
    t = transport(sim.grpc_address)
    try:
        r = await t.unary(INFER, request("nope", [1]), (), 2.0)
        assert (r.code, r.outcome, r.status) == ("NOT_FOUND", Outcome.CLIENT_ERROR, 404)
        assert "unknown model" in r.details
        assert dict(r.trailers)["x-sim-name"] == sim.name
        sim.faults = Faults(error_rate=1.0, error_status=503)
        r = await t.unary(INFER, request("classifier", [1]), (), 2.0)
        assert (r.code, r.outcome) == ("UNAVAILABLE", Outcome.STATUS_5XX)
        sim.faults = Faults(error_rate=1.0, error_status=429)
        r = await t.unary(INFER, request("classifier", [1]), (), 2.0)
        assert r.outcome is Outcome.STATUS_429
        sim.faults = Faults(reset_rate=1.0)
        with pytest.raises(AttemptFailed) as e:
            await t.unary(INFER, request("classifier", [1]), (), 2.0)
        assert e.value.outcome is Outcome.RESET
        sim.faults = Faults(hang_rate=1.0)
        with pytest.raises(AttemptFailed) as e:
            await t.unary(INFER, request("classifier", [1]), (), 0.05)
        assert e.value.outcome is Outcome.TIMEOUT
    finally:
        await t.close()


async def test_a_dead_backend_is_a_connect_failure(sim: SimServer) -> None:
    t = transport(sim.grpc_address)
    try:
        await sim.die()
        with pytest.raises(AttemptFailed) as e:
            await t.unary(INFER, request("classifier", [1]), (), 2.0)
        assert e.value.outcome is Outcome.CONNECT_FAILURE
        with pytest.raises(AttemptFailed) as e:
            await t.open_stream(STREAM, request("classifier", [1]), None, (), None)
        assert e.value.outcome is Outcome.CONNECT_FAILURE
    finally:
        await t.close()


async def test_a_stream_flows_both_ways_and_a_break_is_a_failed_call(sim: SimServer) -> None:
    t = transport(sim.grpc_address)
    more: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def rest() -> AsyncIterator[bytes]:
        while (m := await more.get()) is not None:
            yield m

    try:
        r = await t.open_stream(STREAM, request("streamer", [1, 2], "a"), rest(), (), None)
        stream = r.stream
        assert stream is not None
        first = pb.ModelStreamInferResponse.FromString(await stream.read_message())
        assert first.infer_response.id == "a"
        await stream.read_message()
        await more.put(request("classifier", [3], "b"))
        second = pb.ModelStreamInferResponse.FromString(await stream.read_message())
        assert second.infer_response.id == "b"
        await more.put(None)
        assert await stream.read_message() is None
        stream.release()

        more = asyncio.Queue()
        r = await t.open_stream(STREAM, request("classifier", [1], "c"), rest(), (), None)
        stream = r.stream
        assert stream is not None
        await stream.read_message()
        await sim.die()
        with pytest.raises(GrpcCallFailed) as e:
            await stream.read_message()
        assert e.value.code == "UNAVAILABLE"
        assert e.value.outcome.is_failure
        stream.close()
    finally:
        await t.close()
