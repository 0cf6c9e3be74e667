"""The floor: the least CPU a Python + uvloop HTTP/1.1 reverse proxy can spend per request.

Built from the same blocks as the gateway's fast path (an `asyncio.Protocol` server parsing
with llhttp's `httptools.HttpRequestParser`, a keep-alive upstream pool whose answers are
parsed with `httptools.HttpResponseParser`) and nothing else: parse, forward, parse, write.
No routing, no policy, no metrics, no limits or timeouts, no header processing beyond what
HTTP/1.1 framing needs. Callbacks only: no task, no future, no coroutine per request (a
task only opens a new upstream connection). Whatever a Python proxy on uvloop + llhttp does
beyond this, it pays for; the benchmark shows that next to the aiohttp yardstick
(`bare_proxy.py`).

    python loadtests/baselines/floor_proxy.py --port 8082 --upstream http://127.0.0.1:18001

What it does:

- a request is read whole (Content-Length body) and sent upstream in one write: its
  request line, the client's fields minus Connection, Keep-Alive and Host, a Host naming
  the upstream, the body;
- an idle upstream connection is taken from the pool, or a new one opened (the pool is
  unbounded: as many connections as requests in flight); it goes back after an answer
  llhttp read to its end that keeps the connection alive;
- the answer (Content-Length or chunked, which llhttp decodes) goes back in one write:
  the status line, the upstream's fields minus the hop-by-hop ones, Content-Length and
  Transfer-Encoding, its own Content-Length; interim (1xx) answers are dropped;
- keep-alive and pipelining: requests are answered in order, one at a time, and reading
  pauses while a pipelined request waits its turn. An HTTP/1.0 client is answered
  `Connection: close`;
- an upstream that cannot be reached, closes before its answer ends, or sends what llhttp
  refuses is answered 502.

What it omits: a chunked request body is refused with 501 (the benchmark never sends one);
an answer framed by the close of the connection is answered 502 (httptools has no way to
tell llhttp the stream ended); a HEAD is sent on a connection of its own, closed after its
answer (llhttp does not know the request and would wait for the body its length
announces); no flow control of answers (a slow reader is buffered), no Expect handling,
no trailers, no Upgrade.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections import deque
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import uvloop

# the client's fields not sent upstream (Transfer-Encoding is refused)
REQUEST_HOP = frozenset({b"connection", b"keep-alive", b"host"})
# the upstream's fields not sent back (Content-Length is written anew)
RESPONSE_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
     b"upgrade", b"content-length"}
)  # fmt: skip
STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in HTTPStatus}
CLOSE = b"Connection: close\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Refused(Exception):
    """Raised in a parser callback to stop llhttp; the answer is already chosen."""


class Upstreams:
    """The one upstream: where it is and its idle keep-alive connections (most recent last)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.hostname, url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_field = b"Host: %s\r\n" % parts.netloc.encode()
        self.idle: list[Upstream] = []
        self.opening: set[asyncio.Task[Any]] = set()

    def send(self, client: Client, request: bytes, head: bool) -> None:
        """Send `request` for `client`, who is called back with the answer."""
        if self.idle and not head:
            up = self.idle.pop()
            up.client = client
            up.transport.write(request)
            return
        up = (HeadUpstream if head else Upstream)(self, client, request)
        opening = asyncio.ensure_future(
            asyncio.get_running_loop().create_connection(lambda: up, self.host, self.port)
        )
        self.opening.add(opening)
        opening.add_done_callback(up.opened)


class Upstream(asyncio.Protocol):
    """One upstream connection; the llhttp callbacks assemble the answer for the client."""

    __slots__ = ("answer", "body", "client", "fields", "keep", "length", "parser", "pool",
                 "request", "transport")  # fmt: skip

    transport: asyncio.Transport

    def __init__(self, pool: Upstreams, client: Client, request: bytes) -> None:
        self.pool = pool
        self.client: Client | None = client
        self.request = request  # written when the connection is made
        self.parser = httptools.HttpResponseParser(self)
        self.fields: list[bytes] = []
        self.body: list[bytes] = []
        self.length: bytes | None = None
        self.answer: list[bytes] | None = None
        self.keep = False

    def opened(self, opening: asyncio.Task[Any]) -> None:
        self.pool.opening.discard(opening)
        if opening.cancelled() or opening.exception() is not None:
            self.connection_lost(None)

    # --- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but offer its methods
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)
        self.request = b""

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # bytes while idle answer nothing we asked: never reuse this
            self._discard()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # a broken answer, or bytes after the end of a good one: not reused either way
            self.keep = False
            if self.answer is None:
                self.answer = [BAD_GATEWAY]
        answer = self.answer
        if answer is None:
            return  # more to come
        self.answer = None
        self.client = None
        if self.keep:
            self.pool.idle.append(self)
        else:
            self._discard()
        client.answer(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        idle = self.pool.idle
        if self in idle:
            idle.remove(self)
        client = self.client
        if client is not None:  # closed before the end of the answer
            self.client = None
            client.answer([BAD_GATEWAY])

    def _discard(self) -> None:
        idle = self.pool.idle
        if self in idle:
            idle.remove(self)
        self.transport.close()

    # --- llhttp callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answer is not None:
            raise _Refused  # a second answer in the bytes of the first
        self.fields = [b""]  # the status line goes first
        self.body = []
        self.length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in RESPONSE_HOP:
            if lname == b"content-length":
                self.length = value
            return
        self.fields.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # interim: llhttp reads on to the final answer
        self._finish(status, status != 204 and status != 304)
        self.keep = self.parser.should_keep_alive()

    def _finish(self, status: int, with_body: bool) -> None:
        fields = self.fields
        fields[0] = STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        if with_body:
            body = b"".join(self.body)
            fields.append(b"Content-Length: %d\r\n\r\n" % len(body))
            fields.append(body)
        else:  # the length of what a GET would get, if the upstream said
            if self.length is not None:
                fields.append(b"Content-Length: %s\r\n" % self.length)
            fields.append(b"\r\n")
        self.answer = fields


class HeadUpstream(Upstream):
    """A connection for one HEAD: its answer ends with its head, and the connection with it."""

    __slots__ = ()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self._finish(status, False)
            raise _Refused  # stop llhttp: it would wait for a body; `keep` stays False


class Client(asyncio.Protocol):
    """One client connection: requests parsed by llhttp, forwarded and answered in order."""

    __slots__ = ("body", "busy", "connection", "keep", "last", "parser", "paused", "queue",
                 "request", "transport", "upstreams", "url")  # fmt: skip

    transport: asyncio.Transport

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.request: list[bytes] = []
        self.body: list[bytes] = []
        self.connection = False  # the request has a Connection field
        self.busy = False  # a request is upstream
        self.keep = True  # the connection stays open after the answer under way
        self.queue: deque[tuple[bytes, bool, bool]] = deque()  # pipelined requests
        self.paused = False
        self.last: bytes | None = None  # a refusal, sent after the answers before it

    # --- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.last is None:
                self.last = BAD_REQUEST
            self.transport.pause_reading()
            self.paused = True
            if not self.busy:
                self.transport.write(self.last)
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.clear()
        self.keep = False

    # --- llhttp callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.request = [b""]  # the request line and Host go first
        self.body = []
        self.connection = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in REQUEST_HOP:
            if lname == b"connection":
                self.connection = True
            return
        if lname == b"transfer-encoding":
            self.last = NOT_IMPLEMENTED
            raise _Refused
        self.request.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        # an HTTP/1.0 client keeps the connection only when told `Connection: keep-alive`;
        # this proxy does not tell it so
        keep = parser.should_keep_alive() and (
            not self.connection or parser.get_http_version() == "1.1"
        )
        request = self.request
        request[0] = b"%s %s HTTP/1.1\r\n%s" % (method, self.url, self.upstreams.host_field)
        request.append(b"\r\n")
        request += self.body
        data = b"".join(request)
        head = method == b"HEAD"
        if self.busy:
            self.queue.append((data, keep, head))
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
        else:
            self.busy = True
            self.keep = keep
            self.upstreams.send(self, data, head)

    # --- called by the upstream connection --------------------------------------------------

    def answer(self, answer: list[bytes]) -> None:
        """Write the answer to the request under way, then send the next one."""
        transport = self.transport
        if transport.is_closing():
            return  # the client left
        if not self.keep:
            answer.insert(1, CLOSE)
            transport.write(b"".join(answer))
            transport.close()
            return
        transport.write(b"".join(answer))
        queue = self.queue
        if queue:
            data, self.keep, head = queue.popleft()
            self.upstreams.send(self, data, head)
            if not queue and self.paused and self.last is None:
                self.paused = False
                transport.resume_reading()
            return
        self.busy = False
        if self.last is not None:
            transport.write(self.last)
            transport.close()


async def serve(port: int, upstream: str) -> None:
    upstreams = Upstreams(upstream)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstreams), "127.0.0.1", port, backlog=1024)
    print(f"floor proxy listening on http://127.0.0.1:{port}", flush=True)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    try:
        uvloop.run(serve(a.port, a.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
