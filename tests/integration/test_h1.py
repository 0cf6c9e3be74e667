"""The HTTP/1.1 transport against simulated model servers, with the faults they inject.

The fault tests run the aiohttp transport beside it: both must classify every fault alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import pytest

from gateway.errors import AttemptFailed
from gateway.policy.compile import EndpointSpec
from gateway.proxy.h1 import H1Stream, H1Transport, PoolStats
from gateway.proxy.transport import PoolSpec, UpstreamResponse
from gateway.resilience.outcome import Outcome
from gateway.sim import SimServer
from gateway.sim.faults import Faults
from tests.aiohttp_transport import HttpTransport
from tests.integration.conftest import INFER_BODY, SimFactory
from tests.integration.test_tls import self_signed

INFER = "/v2/models/classifier/infer"
BODY = json.dumps(INFER_BODY).encode()
JSON = {"Content-Type": "application/json"}
CHAT = {"model": "classifier", "messages": [{"role": "user", "content": "one two three"}]}
IDLE = PoolStats(in_use=0, idle=0, waiting=0)


class Transport(Protocol):
    async def send(
        self, method: str, path_qs: str, headers: dict[str, str], body: bytes
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


Make = Callable[[SimServer], Transport]


def h1(sim: SimServer, max_connections: int = 8) -> H1Transport:
    spec = EndpointSpec(id="e", backend="b", url=sim.url, region="local", weight=1, drain=False)
    pool = PoolSpec(max_connections=max_connections, connect_timeout=1.0, idle_timeout=30.0)
    return H1Transport(spec.url, pool, check_json=True)


def aio(sim: SimServer) -> HttpTransport:
    spec = EndpointSpec(id="e", backend="b", url=sim.url, region="local", weight=1, drain=False)
    pool = PoolSpec(max_connections=8, connect_timeout=1.0, idle_timeout=30.0)
    return HttpTransport(spec.url, pool, check_json=True)


@pytest.fixture
async def closing() -> AsyncIterator[list[Transport]]:
    opened: list[Transport] = []
    yield opened
    for t in opened:
        await t.close()


@pytest.fixture(params=["h1", "aiohttp"])
def make(request: pytest.FixtureRequest, closing: list[Transport]) -> Make:
    factory: Make = h1 if request.param == "h1" else aio

    def build(sim: SimServer) -> Transport:
        t = factory(sim)
        closing.append(t)
        return t

    return build


def stream_of(resp: UpstreamResponse) -> H1Stream:
    stream: object = resp.stream
    assert isinstance(stream, H1Stream), "a streamed answer was expected"
    return stream


async def outcome_of(t: Transport, path: str = INFER, body: bytes = BODY) -> Outcome:
    try:
        resp = await t.send("POST", path, JSON, body)
    except AttemptFailed as e:
        assert isinstance(e.outcome, Outcome)
        return e.outcome
    resp.close()
    return resp.outcome


async def test_infer_answers_and_reuses_one_connection(
    sims: SimFactory, closing: list[Transport]
) -> None:
    sim = await sims()
    t = h1(sim)
    closing.append(t)
    for _ in range(20):
        resp = await t.send("POST", INFER, JSON, BODY)
        assert resp.status == 200 and resp.stream is None and resp.body is not None
        assert json.loads(resp.body)["model_name"] == "classifier"
        assert resp.headers["x-sim-name"] == sim.name
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)
    assert await t.get_status("/v2/health/ready", 1.0) == 200


async def test_chat_stream_arrives_event_by_event(
    sims: SimFactory, closing: list[Transport]
) -> None:
    sim = await sims(faults=Faults(stream_delay_ms=5))
    t = h1(sim)
    closing.append(t)
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 5}).encode()
    resp = await t.send("POST", "/v1/chat/completions", JSON, body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    stream = stream_of(resp)
    chunks = []
    while chunk := await stream.read_chunk(timeout=5.0):
        chunks.append(chunk)
    resp.release()
    # role, 5 tokens, finish, [DONE], each its own HTTP chunk, paced by the server
    assert len(chunks) == 8
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)
    # the connection the stream used serves the next request
    assert (await t.send("POST", INFER, JSON, BODY)).status == 200
    assert t.stats().idle == 1


async def test_chat_stream_cut_short_is_malformed(
    sims: SimFactory, closing: list[Transport]
) -> None:
    sim = await sims(faults=Faults(truncate_rate=1.0))
    t = h1(sim)
    closing.append(t)
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 5}).encode()
    resp = await t.send("POST", "/v1/chat/completions", JSON, body)
    stream = stream_of(resp)
    with pytest.raises(AttemptFailed) as info:
        while await stream.read_chunk(timeout=5.0):
            pass
    assert info.value.outcome is Outcome.MALFORMED
    resp.close()
    assert t.stats() == IDLE


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (Faults(reset_rate=1.0), Outcome.RESET),
        (Faults(truncate_rate=1.0), Outcome.MALFORMED),
        (Faults(error_rate=1.0), Outcome.STATUS_5XX),
        (Faults(error_rate=1.0, error_status=429), Outcome.STATUS_429),
    ],
)
async def test_faults_are_classified_like_the_aiohttp_transport(
    sims: SimFactory, make: Make, faults: Faults, expected: Outcome
) -> None:
    sim = await sims()
    t = make(sim)
    assert await outcome_of(t) is Outcome.SUCCESS  # a warm connection, then the fault
    sim.faults = faults
    for _ in range(3):
        assert await outcome_of(t) is expected
    sim.faults = Faults()
    assert await outcome_of(t) is Outcome.SUCCESS


async def test_error_answers_carry_retry_after(sims: SimFactory, make: Make) -> None:
    sim = await sims(faults=Faults(error_rate=1.0, retry_after=2))
    resp = await make(sim).send("POST", INFER, JSON, BODY)
    assert (resp.status, resp.retry_after) == (503, "2")


async def test_a_hang_ends_with_the_callers_timeout_and_leaks_nothing(
    sims: SimFactory, closing: list[Transport]
) -> None:
    sim = await sims(faults=Faults(hang_rate=1.0))
    t = h1(sim)
    closing.append(t)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await t.send("POST", INFER, JSON, BODY)
    assert t.stats() == IDLE
    sim.faults = Faults()
    assert (await t.send("POST", INFER, JSON, BODY)).status == 200


async def test_die_and_revive(sims: SimFactory, closing: list[Transport]) -> None:
    sim = await sims()
    t = h1(sim)
    closing.append(t)
    assert await outcome_of(t) is Outcome.SUCCESS
    await sim.die()
    for _ in range(100):  # the loop takes in the resets of the pooled connection
        if t.stats().idle == 0:
            break
        await asyncio.sleep(0)
    assert t.stats() == IDLE
    # the dead connection is not reused, and nobody listens any more
    assert await outcome_of(t) is Outcome.CONNECT_FAILURE
    await sim.revive()
    assert await outcome_of(t) is Outcome.SUCCESS


async def test_fault_mix_under_concurrency_surfaces_every_fault_exactly(
    sims: SimFactory, closing: list[Transport]
) -> None:
    """No fault is swallowed (a reset is never retried behind the caller's back), none is
    invented, and the pool ends with nothing lent out."""
    sim = await sims(faults=Faults(reset_rate=0.15, truncate_rate=0.15, error_rate=0.15))
    t = h1(sim, max_connections=4)
    closing.append(t)
    outcomes = Counter(await asyncio.gather(*(outcome_of(t) for _ in range(300))))
    assert outcomes[Outcome.RESET] == sim.stats.faults["reset"] > 0
    assert outcomes[Outcome.MALFORMED] == sim.stats.faults["truncate"] > 0
    assert outcomes[Outcome.STATUS_5XX] == sim.stats.faults["error"] > 0
    assert sum(outcomes.values()) == 300 == sim.stats.total
    assert set(outcomes) == {Outcome.SUCCESS, Outcome.RESET, Outcome.MALFORMED, Outcome.STATUS_5XX}
    assert t.stats().in_use == 0 and t.stats().waiting == 0


async def test_hedge_losers_cancelled_mid_flight_leave_the_pool_whole(
    sims: SimFactory, closing: list[Transport]
) -> None:
    sim = await sims(faults=Faults(hang_rate=0.5))
    t = h1(sim, max_connections=4)
    closing.append(t)

    async def race() -> None:
        # first answer wins; the other attempt is cancelled wherever it is
        tasks = [asyncio.create_task(t.send("POST", INFER, JSON, BODY)) for _ in range(2)]
        _, pending = await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    await asyncio.gather(*(race() for _ in range(20)))
    assert t.stats().in_use == 0 and t.stats().waiting == 0
    sim.faults = Faults()
    assert (await t.send("POST", INFER, JSON, BODY)).status == 200


async def test_https_endpoint_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            await answer(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    spec = EndpointSpec(
        id="e", backend="b", url=f"https://127.0.0.1:{port}", region="l", weight=1, drain=False
    )
    pool = PoolSpec(max_connections=2, connect_timeout=1.0, idle_timeout=30.0)
    trusted = H1Transport(
        spec.url, pool, check_json=True, ssl_context=ssl.create_default_context(cafile=str(cert))
    )
    untrusted = H1Transport(spec.url, pool, check_json=True)
    try:
        for _ in range(2):
            assert (await trusted.send("GET", "/", {}, b"")).body == b"{}"
        assert trusted.stats().idle == 1
        with pytest.raises(AttemptFailed) as info:
            await untrusted.send("GET", "/", {}, b"")
        assert info.value.outcome is Outcome.CONNECT_FAILURE
    finally:
        await trusted.close()
        await untrusted.close()
        server.close()
        await server.wait_closed()
