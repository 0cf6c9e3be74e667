"""The HTTP/1.1 upstream transport against tiny loopback servers that send exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.errors import AttemptFailed, ClientError
from gateway.policy.compile import EndpointSpec
from gateway.proxy import h1
from gateway.proxy.h1 import H1Stream, H1Transport, PoolStats, parse_head
from gateway.proxy.transport import BUFFER_LIMIT, PoolSpec, UpstreamResponse
from gateway.resilience.outcome import Outcome

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Servers = Callable[[Handler], Awaitable["RawServer"]]

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
IDLE = PoolStats(in_use=0, idle=0, waiting=0)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (head and Content-Length body), or b"" when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawServer:
    """Counts connections and requests; `handler` runs once per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = 0  # connections the client closed (EOF seen by `serve`)
        self.server: asyncio.Server | None = None
        self.url = ""
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        data = await read_request(reader)
        if data:
            self.requests.append(data)
        else:
            self.closed += 1
        return data


def answering(*responses: bytes, then_close: bool = False) -> Handler:
    """Answer each request on a connection with the next response (the last one repeats)."""

    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        i = 0
        while await srv.request(reader):
            w.write(responses[min(i, len(responses) - 1)])
            await w.drain()
            i += 1
            if then_close:
                return

    return handler


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started: list[RawServer] = []

    async def make(handler: Handler) -> RawServer:
        srv = RawServer(handler)
        await srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.stop()


def transport(
    url: str, *, max_connections: int = 4, idle_timeout: float = 30.0, check_json: bool = True
) -> H1Transport:
    spec = EndpointSpec(id="e1", backend="b", url=url, region="local", weight=1, drain=False)
    pool = PoolSpec(max_connections=max_connections, connect_timeout=1.0, idle_timeout=idle_timeout)
    return H1Transport(spec.url, pool, check_json=check_json)


def stream_of(resp: UpstreamResponse) -> H1Stream:
    stream: object = resp.stream
    assert isinstance(stream, H1Stream), "a streamed answer was expected"
    return stream


async def read_all(resp: UpstreamResponse) -> bytes:
    stream = stream_of(resp)
    out = []
    while chunk := await stream.read_chunk():
        out.append(chunk)
    return b"".join(out)


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until `predicate` holds (a socket event is due, not a time)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def failure(awaitable: Awaitable[object]) -> AttemptFailed:
    with pytest.raises(AttemptFailed) as info:
        await awaitable
    return info.value


# --- requests on the wire -----------------------------------------------------------------


async def test_request_is_written_with_base_path_host_and_one_length(servers: Servers) -> None:
    srv = await servers(answering(OK))
    t = transport(srv.url + "/base/")
    headers = {"X-Request-Id": "r1", "content-length": "999", "Host": "evil"}
    resp = await t.send("POST", "/v2/infer?x=1", headers, b"hello")
    assert (resp.status, resp.body, resp.outcome) == (200, b'{"ok":true}', Outcome.SUCCESS)
    port = srv.url.rsplit(":", 1)[1]
    assert srv.requests == [
        b"POST /base/v2/infer?x=1 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"X-Request-Id: r1\r\nContent-Length: 5\r\n\r\nhello"
    ]
    await t.send("POST", "/empty", {}, b"")
    await t.send("GET", "/get", {}, b"")
    assert b"Content-Length: 0\r\n" in srv.requests[1]
    assert b"Content-Length" not in srv.requests[2]
    assert srv.connections == 1
    await t.close()


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/", {"X-A": "1\r\nX-Injected: yes"}),
        ("/", {"X-A": "1\nX-Injected: yes"}),
        ("/", {"X-A\r\nX-Injected": "yes"}),
        ("/", {"X-A": "nul\0"}),
        # a lenient server may read these names as the framing fields they resemble
        ("/", {"Transfer-Encoding ": "chunked"}),
        ("/", {"Content-Length\t": "0"}),
        ("/", {"X-A: 1": "2"}),
        ("/", {"": "x"}),
        ("/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /b", {}),
        ("/a b", {}),
    ],
)
async def test_a_request_that_would_forge_a_field_or_a_request_is_refused_before_sending(
    servers: Servers, path: str, headers: dict[str, str]
) -> None:
    srv = await servers(answering(OK))
    t = transport(srv.url)
    with pytest.raises(ClientError):
        await t.send("POST", path, headers, b"{}")
    with pytest.raises(ClientError):
        await t.send("GET\r\nX", "/", {"X-A": "1"}, b"")  # the method is checked too
    assert srv.connections == 0
    assert t.stats() == IDLE


# --- bodies ------------------------------------------------------------------------------


async def test_body_split_across_many_reads_is_read_whole(servers: Servers) -> None:
    body = b'{"data": "' + b"x" * 5000 + b'"}'

    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await srv.request(reader):
            msg = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            msg += b"Content-Length: %d\r\n\r\n" % len(body) + body
            for i in range(0, len(msg), 7):
                w.write(msg[i : i + 7])
                await w.drain()
                await asyncio.sleep(0)

    srv = await servers(handler)
    t = transport(srv.url)
    for _ in range(2):
        resp = await t.send("GET", "/", {}, b"")
        assert resp.body == body and resp.stream is None
    assert srv.connections == 1
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)
    await t.close()


async def test_chunked_with_extensions_and_trailers_streams_and_reuses(servers: Servers) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'6;x="y"\r\n world\r\n'
        b"0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n"
    )
    srv = await servers(answering(chunked, OK))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    assert resp.body is None and resp.stream is not None
    assert await read_all(resp) == b"hello world"
    resp.release()
    again = await t.send("GET", "/", {}, b"")
    assert again.body == b'{"ok":true}'
    assert srv.connections == 1
    await t.close()


@pytest.mark.parametrize(
    "framing",
    [
        b"5\r\nhelloXX0\r\n\r\n",  # chunk data not followed by CRLF
        b"zz\r\nhello\r\n0\r\n\r\n",  # size is not hex
        b"0x5\r\nhello\r\n0\r\n\r\n",  # int() would take it; the grammar does not
        b"5\r\nhel",  # closed inside a chunk
    ],
)
async def test_bad_chunk_framing_is_malformed(servers: Servers, framing: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv = await servers(answering(head + framing, then_close=True))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    e = await failure(read_all(resp))
    assert e.outcome is Outcome.MALFORMED
    assert t.stats() == IDLE
    await t.close()


async def test_read_chunk_gives_pieces_then_classifies_a_cut_body(servers: Servers) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv = await servers(answering(head + b"5\r\nhello\r\n3\r\nab", then_close=True))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    stream = stream_of(resp)
    assert await stream.read_chunk() == b"hello"
    assert await stream.read_chunk() == b"ab"
    with pytest.raises(AttemptFailed) as cut:
        await stream.read_chunk()
    assert cut.value.outcome is Outcome.MALFORMED
    resp.close()
    assert t.stats() == IDLE


async def test_truncated_body_is_malformed(servers: Servers) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50
    srv = await servers(answering(cut, then_close=True))
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b""))
    assert e.outcome is Outcome.MALFORMED
    assert t.stats() == IDLE


async def test_reset_mid_body_is_reset(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
        await w.drain()
        rst(w)

    srv = await servers(handler)
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b""))
    assert e.outcome is Outcome.RESET
    assert t.stats() == IDLE


async def test_reset_inside_the_head_is_reset(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await w.drain()
        rst(w)

    srv = await servers(handler)
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b""))
    assert e.outcome is Outcome.RESET
    assert t.stats() == IDLE


async def test_reset_before_answering_is_reset(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)
        rst(w)

    srv = await servers(handler)
    t = transport(srv.url)
    e = await failure(t.send("POST", "/", {}, b"{}"))
    assert e.outcome is Outcome.RESET
    assert len(srv.requests) == 1  # a fresh connection is never sent twice


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        # a transfer coding nobody asked for, that the client would get still encoded
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Len",  # closed inside the head
    ],
)
async def test_unparsable_answers_are_malformed(servers: Servers, answer: bytes) -> None:
    srv = await servers(answering(answer, then_close=True))
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b""))
    assert e.outcome is Outcome.MALFORMED
    assert t.stats() == IDLE


def test_a_long_value_with_inner_whitespace_parses_in_linear_time() -> None:
    # a head of 64 KiB at most, but a backtracking field split took seconds on this one,
    # with the whole event loop stalled
    value = b"a" + b" \t" * 30_000 + b"b"
    data = b"HTTP/1.1 200 OK\r\nX-A:  " + value + b" \r\nContent-Length: 0\r\n"
    started = time.perf_counter()
    head = parse_head(data, "GET")
    assert time.perf_counter() - started < 0.1
    assert head.headers["X-A"] == value.decode()


def test_parse_head_reads_status_headers_and_framing() -> None:
    head = parse_head(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nX-A: \t v \r\n"
        b"Content-Length: 5\r\n",
        "GET",
    )
    assert head.status == 503 and head.length == 5 and head.keep_alive
    assert head.headers["x-a"] == "v" and head.headers["Retry-After"] == "2"
    assert not parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n", "GET").keep_alive
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n", "GET").keep_alive
    assert not parse_head(b"HTTP/1.1 200\r\nConnection: x, Close\r\n", "GET").keep_alive
    kept = b"HTTP/1.1 200\r\nConnection: keep-alive, x-closed\r\nContent-Length: 0\r\n"
    assert parse_head(kept, "GET").keep_alive
    # a length beside chunked: chunked wins and the connection is not trusted again
    both = parse_head(b"HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n", "GET")
    assert both.length == 0 and not both.keep_alive


async def test_http_error_statuses_are_returned_with_their_outcome(servers: Servers) -> None:
    answer = b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}"
    srv = await servers(answering(answer))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    assert (resp.status, resp.outcome, resp.retry_after, resp.body) == (
        503,
        Outcome.STATUS_5XX,
        "3",
        b"{}",
    )
    await t.close()


async def test_malformed_json_success_is_malformed_only_when_checked(servers: Servers) -> None:
    bad = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{"a":'
    srv = await servers(answering(bad))
    e = await failure(transport(srv.url).send("GET", "/", {}, b""))
    assert e.outcome is Outcome.MALFORMED
    resp = await transport(srv.url, check_json=False).send("GET", "/", {}, b"")
    assert resp.body == b'{"a":'


async def test_head_204_and_304_have_no_body_and_keep_the_connection(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while request := await srv.request(reader):
            if request.startswith(b"HEAD"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            elif b"/204" in request:
                w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n")

    srv = await servers(handler)
    t = transport(srv.url)
    for method, path, status in (("HEAD", "/", 200), ("GET", "/204", 204), ("GET", "/3", 304)):
        resp = await t.send(method, path, {}, b"")
        assert (resp.status, resp.body, resp.stream) == (status, b"", None)
    assert srv.connections == 1
    await t.close()


async def test_interim_answers_are_skipped(servers: Servers) -> None:
    srv = await servers(
        answering(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Hints\r\nLink: x\r\n\r\n" + OK)
    )
    resp = await transport(srv.url).send("POST", "/", {}, b"{}")
    assert resp.status == 200 and resp.body == b'{"ok":true}'


async def test_large_body_is_streamed(servers: Servers) -> None:
    body = bytes(range(256)) * (BUFFER_LIMIT // 256 + 100)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    srv = await servers(answering(answer))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    assert resp.body is None
    assert await read_all(resp) == body
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)  # given back at its end
    await t.close()


async def test_body_until_close_is_streamed_and_not_reused(servers: Servers) -> None:
    srv = await servers(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", then_close=True))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    assert await read_all(resp) == b"until the end"
    assert t.stats() == IDLE


async def test_event_stream_arrives_event_by_event(servers: Servers) -> None:
    go_on = asyncio.Event()

    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        await w.drain()
        await go_on.wait()  # the second event only once the first was read by the client
        w.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
        await w.drain()
        await srv.request(reader)

    srv = await servers(handler)
    t = transport(srv.url)
    resp = await t.send("POST", "/v1/chat/completions", {}, b"{}")
    assert resp.headers["Content-Type"] == "text/event-stream"
    stream = stream_of(resp)
    assert await stream.read_chunk() == b"data: 1\n\n"
    go_on.set()
    assert await stream.read_chunk() == b"data: 2\n\n"
    assert await stream.read_chunk() == b""
    resp.release()
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)
    await t.close()


async def test_stream_read_timeout_closes_the_connection(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await srv.request(reader)  # until the client closes

    srv = await servers(handler)
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    e = await failure(stream_of(resp).read_chunk(timeout=0.01))
    assert e.outcome is Outcome.TIMEOUT
    assert t.stats() == IDLE


async def test_an_attempt_without_an_answer_in_time_fails_with_timeout(servers: Servers) -> None:
    async def silent(srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        await srv.request(reader)  # never answers; waits until the client closes

    srv = await servers(silent)
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b"", 0.05))
    assert e.outcome is Outcome.TIMEOUT
    assert e.message == "no answer within 50 ms"
    assert t.stats() == IDLE  # the half-used connection is dropped, never reused


async def test_a_body_that_stalls_past_the_time_limit_fails_with_timeout(servers: Servers) -> None:
    async def stalls(srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await srv.request(reader)

    srv = await servers(stalls)
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b"", 0.05))
    assert e.outcome is Outcome.TIMEOUT
    assert t.stats() == IDLE


async def test_a_wait_for_a_pool_slot_counts_against_the_time_limit(servers: Servers) -> None:
    async def silent(srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        await srv.request(reader)

    srv = await servers(silent)
    t = transport(srv.url, max_connections=1)
    holder = asyncio.create_task(t.send("GET", "/", {}, b""))  # takes the only slot, for good
    await asyncio.sleep(0.02)
    e = await failure(t.send("GET", "/", {}, b"", 0.05))
    assert e.outcome is Outcome.TIMEOUT
    assert t.stats() == PoolStats(in_use=1, idle=0, waiting=0)  # the waiter left the queue
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    assert t.stats() == IDLE


async def test_an_answer_in_time_leaves_no_timer_behind(servers: Servers) -> None:
    async def second_is_slow(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)
        w.write(OK)
        await srv.request(reader)
        await asyncio.sleep(0.15)
        w.write(OK)
        await srv.request(reader)

    srv = await servers(second_is_slow)
    t = transport(srv.url)
    assert (await t.send("GET", "/", {}, b"", 0.1)).status == 200
    # on the same connection: a timer left by the first attempt would fail this one at 0.1 s
    resp = await t.send("GET", "/", {}, b"", 1.0)
    assert resp.status == 200 and resp.body == b'{"ok":true}'
    assert srv.connections == 1
    await t.close()


def stall_the_loop(seconds: float) -> None:
    """Block the event loop for a while, as any slow callback on it would."""
    time.sleep(seconds)


async def test_a_stream_whose_time_ran_out_before_its_reader_woke_is_a_timeout(
    servers: Servers,
) -> None:
    # the head and a first chunk are on the socket before the deadline, but the loop is busy
    # past it (here: the server blocks it), so the timer and the bytes land in the same turn:
    # the attempt fails as a TIMEOUT, still retryable, never as a stream cut after its start
    async def busy(srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        stall_the_loop(0.08)
        await srv.request(reader)

    srv = await servers(busy)
    t = transport(srv.url)
    e = await failure(t.send("GET", "/", {}, b"", 0.05))
    assert e.outcome is Outcome.TIMEOUT
    assert t.stats() == IDLE
    await t.close()


# --- connection reuse ----------------------------------------------------------------------


async def test_connection_close_and_http10_answers_are_not_reused(servers: Servers) -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n"
        b"Content-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ):
        srv = await servers(answering(answer))
        t = transport(srv.url)
        for _ in range(2):
            assert (await t.send("GET", "/", {}, b"")).body == b"ok"
        assert srv.connections == 2
        assert t.stats() == IDLE


async def test_bytes_after_an_answer_stop_reuse(servers: Servers) -> None:
    srv = await servers(answering(OK + b"HTTP/1.1 200 OK\r\n"))
    t = transport(srv.url)
    for _ in range(2):
        assert (await t.send("GET", "/", {}, b"")).status == 200
    assert srv.connections == 2


async def test_bytes_arriving_on_an_idle_connection_stop_reuse(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await srv.request(reader):
            w.write(OK)
            await w.drain()
            w.write(b"late garbage")
            await w.drain()

    srv = await servers(handler)
    t = transport(srv.url)
    await t.send("GET", "/", {}, b"")
    await until(lambda: t.stats().idle == 0)
    assert (await t.send("GET", "/", {}, b"")).status == 200
    assert srv.connections == 2


async def test_idle_connection_closed_by_the_server_is_not_reused(servers: Servers) -> None:
    srv = await servers(answering(OK, then_close=True))
    t = transport(srv.url)
    await t.send("GET", "/", {}, b"")
    await until(lambda: t.stats().idle == 0)  # the server's FIN arrives
    assert (await t.send("POST", "/", {}, b"{}")).status == 200
    assert srv.connections == 2 and len(srv.requests) == 2


async def answers_once_per_connection(
    srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """The first request on each connection is answered; the second is read, then the
    connection closes with no byte of answer: an idle close racing the request looks the
    same as a server that took the request and went away."""
    await srv.request(reader)
    w.write(OK)
    await w.drain()
    await srv.request(reader)


async def test_close_racing_an_idempotent_request_is_retried_once_on_a_fresh_connection(
    servers: Servers,
) -> None:
    srv = await servers(answers_once_per_connection)
    t = transport(srv.url)
    await t.send("GET", "/", {}, b"")
    resp = await t.send("PUT", "/", {}, b"{}")
    assert resp.status == 200
    assert srv.connections == 2
    assert [r.split(b" ")[0] for r in srv.requests] == [b"GET", b"PUT", b"PUT"]
    assert t.stats().in_use == 0


async def test_close_racing_a_post_is_a_reset_and_the_post_is_not_sent_again(
    servers: Servers,
) -> None:
    srv = await servers(answers_once_per_connection)
    t = transport(srv.url)
    await t.send("POST", "/", {}, b"{}")
    e = await failure(t.send("POST", "/", {}, b"{}"))
    assert e.outcome is Outcome.RESET  # the retry policy decides, with its budget
    assert len(srv.requests) == 2 and srv.connections == 1
    assert t.stats() == IDLE


async def test_a_fresh_connection_closed_without_answer_is_not_retried(servers: Servers) -> None:
    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await srv.request(reader)

    srv = await servers(handler)
    t = transport(srv.url)
    e = await failure(t.send("POST", "/", {}, b"{}"))
    assert e.outcome is Outcome.RESET
    assert srv.connections == 1
    assert t.stats() == IDLE


async def test_an_answer_that_ended_while_reading_was_paused_still_sees_the_idle_close(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with a tiny high-water mark, the answer arriving in one read pauses the socket
    monkeypatch.setattr(h1, "READ_HIGH_WATER", 16)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    srv = await servers(answering(chunked, then_close=True))
    t = transport(srv.url)
    resp = await t.send("GET", "/", {}, b"")
    assert await read_all(resp) == b"hello"
    await until(lambda: t.stats().idle == 0)  # the server's FIN is read while idle
    again = await t.send("POST", "/", {}, b"{}")  # so a POST is not lost to that close
    assert await read_all(again) == b"hello"
    assert srv.connections == 2


async def test_idle_timeout_closes_idle_connections(servers: Servers) -> None:
    srv = await servers(answering(OK))
    t = transport(srv.url, idle_timeout=0.0)
    await t.send("GET", "/", {}, b"")
    await t.send("GET", "/", {}, b"")
    assert srv.connections == 2
    await until(lambda: srv.closed == 2)  # both closed by the client once idle
    assert t.stats() == IDLE


async def test_connect_refused_is_a_connect_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = transport(f"http://127.0.0.1:{port}")
    e = await failure(t.send("GET", "/", {}, b""))
    assert e.outcome is Outcome.CONNECT_FAILURE
    assert t.stats() == IDLE


async def test_get_status_probes_with_a_get(servers: Servers) -> None:
    srv = await servers(answering(b"HTTP/1.1 503 X\r\nContent-Length: 4\r\n\r\nnope"))
    t = transport(srv.url + "/base")
    assert await t.get_status("/health", 1.0) == 503
    assert srv.requests[0].startswith(b"GET /base/health HTTP/1.1\r\n")
    await t.close()


# --- health probes on a kept-alive connection ----------------------------------------------

PROBE_ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    # what many application servers send for a JSON health document
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b'Content-Type: application/json\r\n\r\nf\r\n{"status":"UP"}\r\n0\r\n\r\n',
    "event-stream": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Content-Length: 9\r\n\r\ndata: ok\n",
}


@pytest.mark.parametrize("kind", list(PROBE_ANSWERS))
async def test_probes_reuse_one_connection_whatever_the_answer_framing(
    servers: Servers, kind: str
) -> None:
    srv = await servers(answering(PROBE_ANSWERS[kind]))
    t = transport(srv.url)
    for _ in range(20):
        assert await t.get_status("/health", 1.0, frozenset({200})) == 200
    assert (srv.connections, len(srv.requests)) == (1, 20)
    await t.close()


async def test_a_probe_answer_too_long_to_read_closes_its_connection(servers: Servers) -> None:
    size = h1.PROBE_BODY_LIMIT + 2
    big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % size
    srv = await servers(answering(big + b"x" * size + b"\r\n0\r\n\r\n"))
    t = transport(srv.url)
    for _ in range(3):
        assert await t.get_status("/health", 1.0) == 200
    assert srv.connections == 3
    await t.close()


async def test_a_failed_probe_closes_its_connection_the_next_opens_one(servers: Servers) -> None:
    answers = [b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n", PROBE_ANSWERS["length"]]

    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await srv.request(reader):
            w.write(answers[0])
            await w.drain()

    srv = await servers(handler)
    t = transport(srv.url)
    expect = frozenset({200})
    for _ in range(2):
        assert await t.get_status("/health", 1.0, expect) == 503
    assert srv.connections == 2  # one per failed probe
    answers.pop(0)  # healthy again
    for _ in range(5):
        assert await t.get_status("/health", 1.0, expect) == 200
    assert srv.connections == 3  # a fresh one after the last failure, then kept
    await t.close()


async def test_a_probe_that_times_out_closes_its_connection(servers: Servers) -> None:
    gate = Gate()
    srv = await servers(gate.handler)
    t = transport(srv.url)
    e = await failure(t.get_status("/health", 0.05))
    assert e.outcome is Outcome.TIMEOUT
    gate.open.set()
    assert await t.get_status("/health", 1.0) == 200
    assert await t.get_status("/health", 1.0) == 200
    assert srv.connections == 2
    await t.close()


async def test_probes_do_not_queue_behind_traffic_in_a_full_pool(servers: Servers) -> None:
    gate = Gate()
    srv = await servers(gate.handler)
    t = transport(srv.url, max_connections=2)
    held = [asyncio.ensure_future(t.send("GET", "/slow", {}, b"")) for _ in range(3)]
    await gate.wait_for(2)
    assert t.stats() == PoolStats(in_use=2, idle=0, waiting=1)
    probe = asyncio.ensure_future(t.get_status("/health", 1.0))
    await gate.wait_for(3)  # the probe reached the server on its own connection
    assert not probe.done() and t.stats().waiting == 1
    gate.open.set()
    assert await probe == 200
    assert all(r.status == 200 for r in await asyncio.gather(*held))
    await t.close()


# --- pool limit and cancellation -----------------------------------------------------------


class Gate:
    """A server that holds every answer until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.count = 0

    async def handler(
        self, srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await srv.request(reader):
            async with self.arrived:
                self.count += 1
                self.arrived.notify_all()
            await self.open.wait()
            w.write(OK)
            await w.drain()

    async def wait_for(self, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.count >= n)


async def settle(t: H1Transport, stats: PoolStats) -> None:
    await until(lambda: t.stats() == stats)


async def test_pool_limit_queues_the_next_request_until_a_connection_frees(
    servers: Servers,
) -> None:
    gate = Gate()
    srv = await servers(gate.handler)
    t = transport(srv.url, max_connections=2)
    tasks = [asyncio.create_task(t.send("GET", f"/{i}", {}, b"")) for i in range(3)]
    await gate.wait_for(2)
    await settle(t, PoolStats(in_use=2, idle=0, waiting=1))
    assert srv.connections == 2
    gate.open.set()
    assert [r.status for r in await asyncio.gather(*tasks)] == [200, 200, 200]
    assert srv.connections == 2  # the third request waited and reused a connection
    assert t.stats() == PoolStats(in_use=0, idle=2, waiting=0)
    await t.close()


async def test_waiters_are_served_first_come_first_served(servers: Servers) -> None:
    gate = Gate()
    srv = await servers(gate.handler)
    t = transport(srv.url, max_connections=1)
    first = asyncio.create_task(t.send("GET", "/0", {}, b""))
    await gate.wait_for(1)
    waiting = []
    for i in range(1, 4):
        waiting.append(asyncio.create_task(t.send("GET", f"/{i}", {}, b"")))
        await settle(t, PoolStats(in_use=1, idle=0, waiting=i))
    gate.open.set()
    await asyncio.gather(first, *waiting)
    assert [r.split(b" ")[1] for r in srv.requests] == [b"/0", b"/1", b"/2", b"/3"]


async def test_cancelled_waiter_leaves_no_trace(servers: Servers) -> None:
    gate = Gate()
    srv = await servers(gate.handler)
    t = transport(srv.url, max_connections=1)
    first = asyncio.create_task(t.send("GET", "/", {}, b""))
    await gate.wait_for(1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await t.send("GET", "/", {}, b"")
    assert t.stats() == PoolStats(in_use=1, idle=0, waiting=0)
    gate.open.set()
    await first
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)
    await t.close()


async def test_waiter_cancelled_as_the_slot_is_handed_over_passes_it_on(servers: Servers) -> None:
    gate = Gate()
    srv = await servers(gate.handler)
    t = transport(srv.url, max_connections=1)
    first = asyncio.create_task(t.send("GET", "/", {}, b""))
    await gate.wait_for(1)
    second = asyncio.create_task(t.send("GET", "/", {}, b""))
    third = asyncio.create_task(t.send("GET", "/", {}, b""))
    await settle(t, PoolStats(in_use=1, idle=0, waiting=2))
    gate.open.set()
    await first  # the slot is now handed to `second`, which has not run yet
    second.cancel()
    assert (await third).status == 200
    with pytest.raises(asyncio.CancelledError):
        await second
    assert t.stats() == PoolStats(in_use=0, idle=1, waiting=0)
    await t.close()


async def test_waiter_cancelled_before_the_slot_frees_ends_cancelled(servers: Servers) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    srv = await servers(answering(head))
    t = transport(srv.url, max_connections=1)
    held = await t.send("GET", "/", {}, b"")  # a stream holds the only slot
    waiter = asyncio.create_task(t.send("GET", "/", {}, b""))
    await settle(t, PoolStats(in_use=1, idle=0, waiting=1))
    waiter.cancel()  # a hedge loser or a timeout ...
    held.close()  # ... and the slot frees before the cancelled waiter runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert t.stats() == IDLE
    again = await t.send("GET", "/", {}, b"")  # the slot is whole again
    assert await stream_of(again).read_chunk() == b"hello"
    again.close()
    assert t.stats() == IDLE


async def test_cancelled_while_reading_closes_the_connection(servers: Servers) -> None:
    asked = asyncio.Event()

    async def handler(
        srv: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await srv.request(reader):
            if not asked.is_set():
                asked.set()
                continue  # no answer to the first request: the client gives up
            w.write(OK)

    srv = await servers(handler)
    t = transport(srv.url, max_connections=1)
    task = asyncio.create_task(t.send("GET", "/", {}, b""))
    await asked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert t.stats() == IDLE
    await until(lambda: srv.closed == 1)  # the server sees the connection go
    assert (await t.send("GET", "/", {}, b"")).status == 200
    assert srv.connections == 2


async def test_abandoned_stream_closes_its_connection(servers: Servers) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    srv = await servers(answering(head))
    t = transport(srv.url, max_connections=1)
    resp = await t.send("GET", "/", {}, b"")
    assert t.stats().in_use == 1
    resp.release()  # not read to the end: closed, not pooled
    resp.close()  # and a second settle changes nothing
    assert t.stats() == IDLE
    with contextlib.suppress(AttemptFailed):
        await t.send("GET", "/", {}, b"")
    assert srv.connections == 2
