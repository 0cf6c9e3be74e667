"""What a data listener owes a client on the wire, whichever server it is: flow control
toward a slow reader, `Expect: 100-continue`, HTTP/1.0, and requests pipelined on one
connection answered in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.app import Gateway
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

pytestmark = pytest.mark.both_listeners

# A long answer, far larger than every socket buffer and write buffer on its way.
STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 2048  # 128 MiB

PLAIN = """
version: 1
backends:
  files:
    protocol: http
    endpoints: [{{url: "{url}"}}]
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{sim}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
  - name: files
    match: {{path_prefix: /files/}}
    split: [{{backend: files, weight: 100}}]
    timeout: 60s
"""


class LongStream:
    """A backend answering `/files/big` with 64 MiB, chunked, counting what it got to send.

    aiohttp's `write` waits while the socket is full, so `sent` stops growing when the
    gateway stops reading the answer."""

    def __init__(self) -> None:
        self.sent = 0
        self.done = False
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"x" * STREAM_CHUNK
        for _ in range(STREAM_CHUNKS):
            await resp.write(block)
            self.sent += len(block)
        await resp.write_eof()
        self.done = True
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/big", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def long_stream() -> AsyncIterator[LongStream]:
    backend = LongStream()
    await backend.start()
    yield backend
    assert backend.runner is not None
    await backend.runner.cleanup()


async def _stalled(count: LongStream, polls: int = 10) -> int:
    """What the backend had sent once its sending stopped moving (`polls` quiet looks)."""
    last, quiet = -1, 0
    for _ in range(2000):
        await asyncio.sleep(0.02)
        if count.sent == last:
            quiet += 1
            if quiet >= polls:
                return last
        else:
            last, quiet = count.sent, 0
    return count.sent


async def test_a_slow_reader_of_a_long_stream_is_not_buffered(
    sims: SimFactory, gateway: GatewayFactory, long_stream: LongStream
) -> None:
    """A client that stops reading stops the backend too: the gateway holds no more than its
    socket and write buffers, never the stream. Once the client reads again, every byte
    arrives."""
    sim = await sims(models=["classifier"])
    gw = await gateway(PLAIN.format(url=long_stream.url, sim=sim.url))
    assert gw.listening is not None
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    writer.write(b"GET /files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    # the client reads nothing more for now
    held = await _stalled(long_stream)
    total = STREAM_CHUNK * STREAM_CHUNKS
    assert not long_stream.done
    assert held < total // 2, f"the backend sent {held} of {total} bytes to a stalled client"
    # what the gateway itself holds is one write buffer's worth (high-water mark 64 KiB)
    # and the chunk in hand, not the megabytes the sockets hold
    assert gw.unsent_bytes() <= 4 * STREAM_CHUNK, gw.unsent_bytes()
    # the client reads again: the whole stream arrives, framed, and ends cleanly
    body = 0
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 20)
        size = int(size_line.strip().split(b";")[0], 16)
        if size == 0:
            assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 10) == b"\r\n"
            break
        await asyncio.wait_for(reader.readexactly(size + 2), 20)
        body += size
    assert body == total
    writer.close()


async def _one_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


def _infer_head(extra: bytes = b"", version: bytes = b"1.1") -> tuple[bytes, bytes]:
    body = json.dumps(INFER_BODY).encode()
    head = (
        b"POST /v2/models/classifier/infer HTTP/" + version + b"\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n"
    )
    return head, body


async def _plain(sims: SimFactory, gateway: GatewayFactory) -> Gateway:
    sim = await sims(models=["classifier"])
    return await gateway(PLAIN.format(url=sim.url, sim=sim.url))


async def test_expect_100_continue_is_answered_before_the_body(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    """A client that waits for `100 Continue` gets it, then sends the body, then the answer."""
    gw = await _plain(sims, gateway)
    assert gw.listening is not None
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    head, body = _infer_head(b"Expect: 100-continue\r\n")
    writer.write(head)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    answer, data = await _one_answer(reader)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b'"outputs"' in data
    writer.close()


async def test_http_10_is_answered_in_http_10_and_closed_unless_kept_alive(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    gw = await _plain(sims, gateway)
    assert gw.listening is not None
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    head, body = _infer_head(version=b"1.0")
    writer.write(head + body)
    answer, _ = await _one_answer(reader)
    assert answer.startswith(b"HTTP/1.0 200"), answer
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the answer
    writer.close()

    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    head, body = _infer_head(b"Connection: keep-alive\r\n", version=b"1.0")
    for _ in range(2):
        writer.write(head + body)
        answer, _ = await _one_answer(reader)
        assert answer.startswith(b"HTTP/1.0 200"), answer
        assert b"connection: keep-alive" in answer.lower()
    writer.close()


async def test_pipelined_requests_are_answered_in_order(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    """Five requests sent at once on one connection get five answers, in the order asked."""
    gw = await _plain(sims, gateway)
    assert gw.listening is not None
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    head, body = _infer_head()
    ids = [f"pipelined-{k}" for k in range(5)]
    marked = [head.replace(b"\r\n\r\n", f"\r\nx-request-id: {i}\r\n\r\n".encode()) for i in ids]
    writer.write(b"".join(h + body for h in marked))
    seen = []
    for _ in ids:
        answer, _ = await _one_answer(reader)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        rid = next(
            line.split(b":", 1)[1].strip().decode()
            for line in answer.split(b"\r\n")
            if line.lower().startswith(b"x-request-id:")
        )
        seen.append(rid)
    assert seen == ids
    writer.close()
