"""What the gRPC listener allows one client: message and metadata sizes, streams, connections,
idle connections and ping floods (`gateway.grpc` and the limits every listener shares).

Real clients (tritonclient.grpc.aio, grpc.aio) against the gateway's listener on port 0 and
gRPC sims behind it. Each limit is shown by what the client sees and by what the backend did
not get; times are short settings waited for by polling, never asserted.
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
import tritonclient.grpc.aio as tg
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.policy.compile import GrpcLimits
from gateway.proxy.grpc_edge import server_options
from gateway.sim import Faults, SimServer

MakeGateway = Callable[[str], Awaitable[Gateway]]
INFER = "/inference.GRPCInferenceService/ModelInfer"

POLICY = """
version: 1
gateway: {{max_body: 64KiB, max_header_size: 4KiB, {gateway}}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{sim}"}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 3, failure_rate: 50%, open_for: 30s}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 10s
"""


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    s = SimServer(models=["classifier"], grpc_port=0, seed=7)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def gateway(tmp_path: Path, sim: SimServer) -> AsyncIterator[MakeGateway]:
    started: list[Gateway] = []

    async def make(settings: str) -> Gateway:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(textwrap.dedent(POLICY.format(gateway=settings, sim=sim.grpc_address)))
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


def tensor(count: int) -> tg.InferInput:
    inp = tg.InferInput("INPUT0", [1, count], "FP32")
    inp.set_data_from_numpy(np.ones((1, count), dtype=np.float32))
    return inp


def attempts(gw: Gateway) -> float:
    reg = gw.metrics.registry
    return sum(
        s.value
        for m in reg.collect()
        if m.name == "tailguard_upstream_attempts"
        for s in m.samples
        if s.name == "tailguard_upstream_attempts_total"
    )


def breaker_closed(gw: Gateway) -> bool:
    state = gw.snapshot.backends["clf"].states[0]
    assert state.breaker is not None
    return state.breaker.state(gw.clock.now()).name == "CLOSED"


def test_the_options_follow_the_policy_and_the_shared_limits() -> None:
    options = dict(server_options(GrpcLimits(max_receive_message=1000, max_metadata_size=2048)))
    assert options["grpc.max_receive_message_length"] == 1000
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == 2048
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.http2.max_ping_strikes"] == 2
    # "never" is the largest time gRPC takes
    assert (
        dict(server_options(GrpcLimits(max_connection_age=None)))["grpc.max_connection_age_ms"]
        == 2**31 - 1
    )


async def test_an_oversized_message_is_refused_before_the_backend(
    gateway: MakeGateway, sim: SimServer
) -> None:
    gw = await gateway("")
    async with tg.InferenceServerClient(address(gw)) as client:
        r = await client.infer("classifier", [tensor(1024)])  # 4 KiB of data
        assert r.as_numpy("OUTPUT0").shape == (1, 1024)
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor(32 * 1024)])  # 128 KiB > max_body
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert sim.stats.by_kind["infer"] == 1
    assert attempts(gw) == 1
    assert breaker_closed(gw)


async def test_an_answer_over_the_send_limit_is_refused_and_not_the_backends_fault(
    gateway: MakeGateway, sim: SimServer
) -> None:
    gw = await gateway("grpc: {max_send_message: 8KiB}")
    async with tg.InferenceServerClient(address(gw)) as client:
        await client.infer("classifier", [tensor(1024)])  # a 4 KiB answer
        for _ in range(3):
            with pytest.raises(InferenceServerException) as e:
                await client.infer("classifier", [tensor(4 * 1024)])  # a 16 KiB answer
            assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert sim.stats.by_kind["infer"] == 4  # the backend answered every one, once
    assert breaker_closed(gw)


async def test_oversized_metadata_are_refused_before_the_backend(
    gateway: MakeGateway, sim: SimServer
) -> None:
    gw = await gateway("")
    async with tg.InferenceServerClient(address(gw)) as client:
        await client.infer("classifier", [tensor(4)], headers={"x-note": "a" * 1024})
        with pytest.raises(InferenceServerException) as e:
            await client.infer("classifier", [tensor(4)], headers={"x-note": "a" * 8192})
        assert e.value.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INTERNAL")
    assert sim.stats.by_kind["infer"] == 1
    assert attempts(gw) == 1


async def test_one_connection_never_has_more_calls_in_flight_than_max_concurrent_streams(
    gateway: MakeGateway, sim: SimServer
) -> None:
    gw = await gateway("grpc: {max_concurrent_streams: 2}")
    sim.faults = Faults.from_dict({"latency": {"kind": "fixed", "ms": 100}})
    peak = 0
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        call = channel.unary_unary(INFER)
        body = _request_bytes()
        await call(body, timeout=30)
        calls = asyncio.gather(*(call(body, timeout=30) for _ in range(6)), return_exceptions=True)
        while not calls.done():
            peak = max(peak, sim.stats.in_flight)
            await asyncio.sleep(0.005)
        results = await calls
    served = [r for r in results if isinstance(r, bytes)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    # grpc core refuses a stream over the limit (REFUSED_STREAM: UNAVAILABLE, never processed,
    # safe to retry) more often than the client waits for a free one
    assert len(served) + len(refused) == 6 and len(served) >= 2
    assert all(r.code() is grpc.StatusCode.UNAVAILABLE for r in refused)
    assert 1 <= peak <= 2
    assert sim.stats.by_kind["infer"] == 1 + len(served)  # a refused call never went upstream
    assert breaker_closed(gw)


async def test_connections_beyond_max_connections_are_refused(gateway: MakeGateway) -> None:
    gw = await gateway("max_connections: 1")
    own = [("grpc.use_local_subchannel_pool", 1)]
    async with (
        grpc.aio.insecure_channel(address(gw), options=own) as first,
        grpc.aio.insecure_channel(address(gw), options=own) as second,
    ):
        await first.unary_unary(INFER)(_request_bytes(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await second.unary_unary(INFER)(_request_bytes(), timeout=2)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        await first.unary_unary(INFER)(_request_bytes(), timeout=10)  # the first one stays


async def test_an_idle_connection_is_closed_by_the_gateway(gateway: MakeGateway) -> None:
    gw = await gateway("grpc: {max_connection_idle: 100ms}")
    async with grpc.aio.insecure_channel(address(gw)) as channel:
        await channel.unary_unary(INFER)(_request_bytes(), timeout=10)
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        state = await _next_state(channel, grpc.ChannelConnectivity.READY)
        assert state is grpc.ChannelConnectivity.IDLE  # GOAWAY: a clean close, not a failure
        await channel.unary_unary(INFER)(_request_bytes(), timeout=10)  # reconnects


async def test_a_ping_flood_is_refused(gateway: MakeGateway) -> None:
    gw = await gateway("grpc: {max_ping_strikes: 2}")
    host, port = address(gw).rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(H2_PREFACE + _frame(SETTINGS, 0, b""))
        # pings with no call open: each one after the first is a strike (keepalive without
        # calls is not permitted), and past two strikes the connection is closed. One ping at
        # a time, each answered before the next, so nothing is written after the GOAWAY.
        answered = 0
        for i in range(10):
            writer.write(_frame(PING, 0, i.to_bytes(8, "big")))
            kind, payload = await _until(reader, (PING, GOAWAY))
            if kind != PING:
                break
            answered += 1
        assert kind == GOAWAY
        error = int.from_bytes(payload[4:8], "big")
        assert error == ENHANCE_YOUR_CALM and payload[8:] == b"too_many_pings"
        # the first ping is free, two strikes are allowed, the third (still acknowledged) ends it
        assert answered == 4
    finally:
        writer.close()
    # a client that pings as gRPC clients do is served
    async with tg.InferenceServerClient(
        address(gw), keepalive_options=tg.KeepAliveOptions(keepalive_time_ms=10_000)
    ) as client:
        await client.infer("classifier", [tensor(4)])


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ENHANCE_YOUR_CALM = 0xB


def _frame(kind: int, flags: int, payload: bytes, stream: int = 0) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


async def _until(reader: asyncio.StreamReader, wanted: tuple[int, ...]) -> tuple[int, bytes]:
    """Read HTTP/2 frames until one of the `wanted` kinds (or the connection's end: -1)."""
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(9), 30)
        except asyncio.IncompleteReadError:
            return -1, b""
        size, kind = int.from_bytes(head[:3], "big"), head[3]
        payload = await reader.readexactly(size)
        if kind in wanted:
            return kind, payload


async def _next_state(
    channel: grpc.aio.Channel, state: grpc.ChannelConnectivity
) -> grpc.ChannelConnectivity:
    await asyncio.wait_for(channel.wait_for_state_change(state), 30)
    return channel.get_state()


def _request_bytes() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="classifier", id="limits")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones(4, dtype=np.float32).tobytes())
    return bytes(req.SerializeToString())


__all__: list[Any] = []
