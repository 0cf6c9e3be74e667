"""The data listener on llhttp: one `asyncio.Protocol` per connection, `httptools` parsing.

aiohttp's server makes a request object, a payload stream and a response object for every
request and writes through several layers; this listener parses with llhttp (the parser
Node.js runs, bound for Python by `httptools`) and writes each answer itself, in one
`write` where it can. The request's life (exchange, stages, error answers, stream
semantics) is `ProxyServer`'s, the same for both listeners; what is here is HTTP/1.1 on
the wire:

- the limits of `ListenerLimits`, as the aiohttp listener keeps them: `header_timeout`
  for a new connection's first request head, `idle_timeout` for the next one on a
  kept-alive connection (partial bytes or not), at most `max_connections` (more are
  closed as they arrive), `max_header_size` for the request line, each field and the
  whole block, at most `MAX_HEADERS` fields;
- what llhttp accepts but HTTP/1.1 forbids is refused here (RFC 9112 3.2 and 6.1): a
  missing or repeated Host, Transfer-Encoding in HTTP/1.0, a body on a request that asks
  to switch protocols. A refused framing is answered with 400 and the connection closes;
- keep-alive and pipelining: requests are answered in order, one at a time, and reading
  pauses while a pipelined request waits its turn;
- flow control both ways: a body is read when the pipeline asks for it (after
  authentication), with at most `BODY_BUFFER` bytes taken before reading pauses; an answer
  is written no faster than the client takes it (`pause_writing`), so a slow reader of a
  long stream holds at most the transport's write buffer, never the stream;
- `Expect: 100-continue` is answered when the body is wanted, not before;
- a client that leaves cancels the task serving it (its attempts and hedges with it);
- after an answer given before the body was read (401, 413), the rest of the body is read
  and dropped for at most `LINGER` seconds, so the client sees the answer, not a reset.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BodyTooLarge, ClientError, HeadersTooLarge, RequestTimeout
from gateway.policy.compile import ListenerLimits
from gateway.proxy.listener import MAX_HEADERS
from gateway.proxy.server import CONTINUE, ProxyServer, expects_continue, refusal_bytes

log = logging.getLogger("tailguard.proxy")

# Body bytes taken from a connection before the pipeline asks for them; then reading pauses.
BODY_BUFFER = 64 * 1024
# Longest wait for the rest of a body nobody read, after its answer (as aiohttp lingers).
LINGER = 2.0
# Answers with bodies up to this size go out in one write, head and body joined.
JOIN_LIMIT = 16 * 1024
_EMPTY_BODY_STATUSES = frozenset((204, 304, *range(100, 200)))
_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _status_line(minor: int, status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.{minor} {status} {phrase}\r\n"


_STATUS_LINES: dict[tuple[int, int], str] = {
    (m, int(s)): _status_line(m, s) for m in (0, 1) for s in HTTPStatus
}


def translate(error: Exception) -> ClientError:
    """What llhttp refused, in the gateway's vocabulary (always the client's fault)."""
    cause = error.__context__
    if isinstance(error, httptools.HttpParserCallbackError) and isinstance(cause, ClientError):
        return cause  # a limit this listener enforces from inside a parser callback
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return ClientError("the request method is not one HTTP defines")
    if isinstance(error, httptools.HttpParserInvalidURLError):
        return ClientError("the request target has characters that must be escaped")
    return ClientError(f"malformed request: {error}")


class _Request:
    """One request as llhttp reads it: its head, then its body as it arrives."""

    __slots__ = (
        "body",
        "complete",
        "discard",
        "error",
        "expect",
        "has_body",
        "headers",
        "http11",
        "keep_alive",
        "length",
        "limit",
        "method",
        "opened",
        "problem",
        "raw",
        "reading",
        "served",
        "size",
        "target",
        "waiter",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.raw: list[tuple[bytes, bytes]] = []
        self.headers = _EMPTY_HEADERS
        self.http11 = True
        self.served = True
        self.keep_alive = False
        self.length: int | None = None
        self.has_body = False
        self.expect = False
        # what the head already breaks (answered without serving it)
        self.problem: ClientError | None = None
        self.opened = False  # its exchange exists (a later framing error is the body's)
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        # the pipeline asked for the body (then it is read whatever its size, up to `limit`)
        self.reading = False
        self.limit = 0
        # the rest of the body is dropped as it arrives (too large, or answered without it)
        self.discard = False
        # the body broke off (bad chunk framing): the reader raises it
        self.error: ClientError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H1Connection(asyncio.Protocol):
    """One client connection: llhttp's callbacks in, requests served in order, answers out.

    It is also the `AnswerWriter` of the request it is answering (one at a time).
    """

    def __init__(self, listener: H1Listener, loop: asyncio.AbstractEventLoop) -> None:
        self._listener = listener
        # kept: asyncio.get_running_loop() costs a getpid() system call each time
        self._loop = loop
        self._limits = listener.limits
        self._line_limit = listener.limits.max_header_size
        # a head whose bytes pass this is cut off: a request line and a field block, each
        # at most the limit (the block's exact size is checked once it is whole)
        self._head_limit = 2 * listener.limits.max_header_size + 1024
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client_ip = ""
        self._parsing: _Request | None = None
        self._in_head = False
        self._head_bytes = 0
        # requests whose head is whole, in arrival order; the first is being answered
        self._queue: deque[_Request] = deque()
        # the connection's serving task (made with its first request), busy while answering
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._wakeup: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time a head must arrive by (0: none due)
        self._read_paused = False
        self._done_reading = False  # nothing more is read as a request (error, upgrade, close)
        self._lost = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        # how the answer being written is framed
        self._close_after = False
        self._chunked = False
        self._bodiless = False
        self._minor = 1
        self._shutting_down = False

    # --- connection events ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes; they have their methods
        self._transport = transport  # type: ignore[assignment]
        listener = self._listener
        listener.connections.add(self)
        if len(listener.connections) > self._limits.max_connections:
            self._done_reading = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._client_ip = str(peer[0])
        self._arm(self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._done_reading = True
        self._listener.connections.discard(self)
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            # the client left: the request's attempts and hedges are cancelled with it
            self._task.cancel()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(ConnectionResetError("the client closed the connection"))
        for r in self._queue:
            r.wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None:
            self._drained = None
            if not drained.done():
                drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # the bytes after a request asking to switch protocols are not HTTP/1.1
            self._stop_reading()
        except httptools.HttpParserError as e:
            self._broken(translate(e))
            return
        if self._in_head and self._head_bytes > self._head_limit:
            self._broken(HeadersTooLarge(f"request head exceeds {self._head_limit} bytes"))

    # --- llhttp callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = _Request()
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        r = self._parsing
        assert r is not None
        r.target += url
        if len(r.target) > self._line_limit:
            raise ClientError(f"the request target is longer than {self._line_limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field: never merged into the head (the connection closes)
        r = self._parsing
        assert r is not None
        raw = r.raw
        raw.append((name, value))
        if len(raw) > MAX_HEADERS:
            raise HeadersTooLarge(f"more than {MAX_HEADERS} header fields")
        if len(name) + len(value) > self._line_limit:
            raise HeadersTooLarge(f"a header field is longer than {self._line_limit} bytes")

    def on_headers_complete(self) -> None:
        r = self._parsing
        assert r is not None
        parser = self._parser
        r.method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        r.http11 = version == "1.1"
        r.served = r.http11 or version == "1.0"
        r.keep_alive = parser.should_keep_alive()
        headers = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in r.raw]
        )
        r.headers = CIMultiDictProxy(headers)
        length = headers.get("Content-Length")
        chunked = "Transfer-Encoding" in headers
        if length is not None:
            r.length = int(length)  # llhttp let only digits through
        r.has_body = chunked or bool(r.length)
        r.expect = expects_continue(headers)
        hosts = len(headers.getall("Host", ()))
        if hosts > 1 or (hosts == 0 and r.http11):
            r.problem = ClientError("an HTTP/1.1 request carries exactly one Host field")
        elif chunked and not r.http11:
            r.problem = ClientError("Transfer-Encoding is not HTTP/1.0: the framing is unknown")
        elif parser.should_upgrade() and r.has_body:
            r.problem = ClientError("a request to switch protocols cannot carry a body here")
        if r.problem is not None:
            self._stop_reading()
        self._disarm()
        self._in_head = False
        self._enqueue(r)

    def on_body(self, body: bytes) -> None:
        r = self._parsing
        assert r is not None
        if r.discard:
            return
        r.body.append(body)
        r.size += len(body)
        if r.reading:
            if r.size > r.limit:
                r.discard = True
                r.body = []
                r.wake()
        elif r.size >= BODY_BUFFER:
            self._pause()  # nobody asked for this body yet

    def on_message_complete(self) -> None:
        r = self._parsing
        assert r is not None
        self._parsing = None
        r.complete = True
        r.wake()
        if r.discard and not self._busy:
            # the rest of a body answered without it: now the connection is merely idle
            self._arm(self._limits.idle_timeout)

    # --- serving ---------------------------------------------------------------------------

    def _enqueue(self, r: _Request) -> None:
        """A request to answer after those before it, by the connection's one serving task."""
        self._queue.append(r)
        if self._task is None:
            self._busy = True
            self._task = self._loop.create_task(self._serve())
        elif self._busy:
            self._pause()  # pipelined: it waits for the answers before it
        else:
            self._busy = True
            wakeup = self._wakeup
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)

    async def _serve(self) -> None:
        """Answer the queued requests in order, waiting idle between them, until the
        connection closes (one task per connection: none is made per request)."""
        queue = self._queue
        proxy = self._listener.proxy
        scheme = self._listener.scheme
        loop = self._loop
        try:
            while not self._lost:
                if not queue:
                    self._busy = False
                    if not self._deadline:
                        self._arm(self._limits.idle_timeout)
                    self._resume()
                    wakeup = self._wakeup = loop.create_future()
                    await wakeup
                    self._wakeup = None
                    continue
                r = queue[0]
                r.opened = True
                ex, handler, problem, close = proxy.open(
                    r.method,
                    r.target.decode("utf-8", "surrogateescape"),
                    r.served,
                    r.headers,
                    r.raw,
                    self._client_ip,
                    scheme,
                    r.problem,
                )
                if r.has_body:
                    timeout = ex.snapshot.settings.body_timeout
                    ex.body_reader = functools.partial(self._read_body, r, timeout)
                self._close_after = close or not r.keep_alive or self._shutting_down
                self._bodiless = r.method == "HEAD"
                self._minor = 1 if r.http11 else 0
                await proxy.serve(ex, handler, problem, close, self)
                queue.popleft()
                transport = self._transport
                assert transport is not None
                if self._close_after or transport.is_closing():
                    self._done_reading = True
                    transport.close()
                    return
                if not r.complete:
                    # answered before its body was read: drop the rest as it comes, for a while
                    r.discard = True
                    r.body = []
                    self._arm(min(LINGER, self._limits.idle_timeout))
        except ConnectionError:
            # the client went away while its answer was written (the exchange has ended)
            if self._transport is not None:
                self._transport.abort()
        except Exception:
            log.exception("the connection from %s broke while answering", self._client_ip)
            if self._transport is not None:
                self._transport.abort()
        finally:
            self._busy = False

    async def _read_body(self, r: _Request, timeout: float, limit: int) -> bytes:
        """The whole request body as sent (content codings untouched), bounded in size and time."""
        if r.length is not None and r.length > limit:
            raise BodyTooLarge(
                f"request body of {r.length} bytes exceeds the limit of {limit} bytes"
            )
        if not r.complete and r.error is None:
            r.reading = True
            r.limit = limit
            if r.size <= limit:
                if r.expect and r.http11 and not r.size and self._transport is not None:
                    self._transport.write(CONTINUE)
                waiter = r.waiter = self._loop.create_future()
                self._resume()
                try:
                    async with asyncio.timeout(timeout):
                        await waiter
                except TimeoutError:
                    raise RequestTimeout(f"request body not received within {timeout:g}s") from None
                finally:
                    r.waiter = None
        if r.error is not None:
            raise r.error
        if r.discard or r.size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        if not r.complete:
            raise ClientError("request body ended before its Content-Length")
        body = r.body
        return body[0] if len(body) == 1 else b"".join(body)

    # --- AnswerWriter ------------------------------------------------------------------------

    def _head(self, status: int, headers: CIMultiDict[str], length: int | None) -> bytes:
        """Status line and fields, framed as aiohttp frames them (so clients see no change)."""
        minor = self._minor
        empty = status in _EMPTY_BODY_STATUSES
        bodiless = self._bodiless or empty
        if "Content-Length" in headers:
            del headers["Content-Length"]  # the framing is this writer's to say
        if empty:
            framing = ""
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
        elif bodiless:
            framing = ""
        elif minor:
            self._chunked = True
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            framing = ""
            self._close_after = True  # an HTTP/1.0 client sees the end by the close
        if not bodiless and length != 0 and "Content-Type" not in headers:
            framing += "Content-Type: application/octet-stream\r\n"
        if "Date" not in headers:
            framing += self._listener.date_field()
        if "Connection" not in headers:
            if self._close_after:
                if minor:
                    framing += "Connection: close\r\n"
            elif not minor:
                framing += "Connection: keep-alive\r\n"
        line = _STATUS_LINES.get((minor, status)) or _status_line(minor, status)
        fields = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        # one line per field: a value holding CR or LF would split the answer (injection)
        n = len(headers)
        if fields.count("\n") != n or fields.count("\r") != n:
            raise ValueError("a header field holds a line break")
        return (line + fields + framing + "\r\n").encode("utf-8", "surrogateescape")

    def _writable(self) -> asyncio.Transport:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        return transport

    async def _drain(self) -> None:
        if self._write_paused:
            self._writable()
            drained = self._drained = self._loop.create_future()
            await drained

    async def whole(self, status: int, headers: CIMultiDict[str], body: bytes, close: bool) -> None:
        transport = self._writable()
        r = self._queue[0]
        if close or (r.has_body and not r.complete and r.expect and not r.reading):
            # a client still waiting to send its body after `Expect` cannot be kept in step
            self._close_after = True
        head = self._head(status, headers, len(body))
        self._chunked = False
        if self._bodiless or status in _EMPTY_BODY_STATUSES or not body:
            transport.write(head)
        elif len(body) <= JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        await self._drain()

    async def head(self, status: int, headers: CIMultiDict[str], close: bool) -> None:
        transport = self._writable()
        if close:
            self._close_after = True
        self._chunked = False
        transport.write(self._head(status, headers, None))
        await self._drain()

    async def chunk(self, data: bytes) -> None:
        transport = self._writable()
        if self._bodiless or not data:
            return
        if not self._chunked:
            transport.write(data)
        elif len(data) <= JOIN_LIMIT:
            transport.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        await self._drain()

    async def finish(self) -> None:
        transport = self._writable()
        if self._chunked and not self._bodiless:
            transport.write(b"0\r\n\r\n")
        await self._drain()

    def abort(self) -> None:
        self._close_after = True
        if self._transport is not None:
            self._transport.abort()

    def refuse(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self._close_after = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(refusal_bytes(status, headers, body))

    # --- reading and timers -----------------------------------------------------------------

    def _broken(self, problem: ClientError) -> None:
        """llhttp (or a limit) refused the bytes: answer what came before, then refuse, close."""
        self._stop_reading()
        r = self._parsing
        in_head = self._in_head
        self._parsing = None
        self._in_head = False
        if r is not None and not in_head:
            if not r.opened:
                # refused before anyone looked at it: answered as the refusal it is
                r.problem = problem
                return
            # the body of a request being answered broke off: its reader says so
            r.error = problem
            r.discard = True
            r.wake()
            if not any(q is r for q in self._queue):
                # already answered (without its body): nothing more to say, only to close
                self._close_after = True
                if not self._busy and self._transport is not None:
                    self._transport.close()
            return
        refusal = r if r is not None else _Request()
        refusal.problem = problem
        refusal.complete = True
        self._disarm()
        self._enqueue(refusal)

    def _stop_reading(self) -> None:
        self._done_reading = True
        self._pause()

    def _pause(self) -> None:
        transport = self._transport
        if not self._read_paused and transport is not None and not transport.is_closing():
            self._read_paused = True
            transport.pause_reading()

    def _resume(self) -> None:
        transport = self._transport
        if (
            self._read_paused
            and not self._done_reading
            and transport is not None
            and not transport.is_closing()
        ):
            self._read_paused = False
            transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        """A request head (or the rest of a lingering body) is due within `seconds`.

        The timer is moved lazily: most requests arrive long before it fires, so one timer
        per connection re-checks the deadline when it fires rather than one per request.
        """
        loop = self._loop
        deadline = self._deadline = loop.time() + seconds
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = loop.call_at(deadline, self._overdue)

    def _disarm(self) -> None:
        self._deadline = 0.0

    def _overdue(self) -> None:
        """No request head in time (first, next, or the rest of a lingering body)."""
        self._timer = None
        deadline = self._deadline
        if not deadline:
            return
        loop = self._loop
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._overdue)
            return
        if not self._busy and self._transport is not None:
            self._done_reading = True
            self._transport.close()

    def shut_down(self) -> None:
        """The listener stops: close now if idle, else after the answer being written."""
        self._shutting_down = True
        self._close_after = True
        if not self._busy and self._transport is not None:
            self._done_reading = True
            self._transport.close()

    def unsent_bytes(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def busy(self) -> asyncio.Task[None] | None:
        """The task answering a request, if one is being answered."""
        return self._task if self._busy else None


class H1Listener:
    """The data port served by `H1Connection`s; `start` binds it, `stop` drains it."""

    def __init__(self, proxy: ProxyServer, limits: ListenerLimits) -> None:
        self.proxy = proxy
        self.limits = limits
        self.connections: set[H1Connection] = set()
        self.scheme = "http"
        self._server: asyncio.AbstractServer | None = None
        self._date_at = 0
        self._date = ""

    async def start(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> int:
        """Listen; returns the bound port (port 0 picks a free one)."""
        self.scheme = "https" if tls is not None else "http"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H1Connection(self, loop),
            host,
            port,
            ssl=tls,
            backlog=backlog,
            reuse_port=reuse_port or None,
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self, timeout: float) -> None:
        """Stop accepting; answers being written get `timeout` to finish, then are cut."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        for conn in list(self.connections):
            conn.shut_down()
        busy = [t for c in self.connections if (t := c.busy) is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for conn in list(self.connections):
            if conn.busy is not None:
                conn.busy.cancel()
            conn.abort()
        await server.wait_closed()

    def unsent_bytes(self) -> int:
        """Answer bytes written to the transports and not yet taken by the clients."""
        return sum(c.unsent_bytes() for c in self.connections)

    def date_field(self) -> str:
        """The Date field of answers (with its line end), made once a second."""
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = f"Date: {formatdate(now, usegmt=True)}\r\n"
        return self._date


__all__ = ["BODY_BUFFER", "LINGER", "H1Connection", "H1Listener", "translate"]
