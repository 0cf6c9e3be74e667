"""A lean HTTP/1.1 upstream transport: one bounded keep-alive pool per endpoint.

It implements `gateway.proxy.transport.Transport` at a fraction of aiohttp's CPU cost per
request: the request is encoded in one string and written in one call, the answer is
parsed by llhttp (`httptools.HttpResponseParser`, strict mode) as its bytes arrive, and a
small answer costs one wake-up. llhttp is the parser Node.js runs; the client adds only
what it refuses beyond llhttp (HTTP versions other than 1.0 and 1.1, control characters
in the reason phrase, a status below 100, a 101, transfer codings other than chunked) and
the size limit of a head.

Like every transport, this is the edge where socket trouble becomes the gateway's
vocabulary: every failure leaves as `AttemptFailed` carrying an `Outcome`.

- CONNECT_FAILURE: the connection could not be opened within `PoolSpec.connect_timeout`.
- RESET: the connection closed or was reset before a complete answer.
- MALFORMED: an unparsable status line or header block, a body shorter than its
  Content-Length, bad chunk framing, a transfer coding other than chunked.

Connection reuse is conservative: a connection goes back to the pool only after an
HTTP/1.1 answer without `Connection: close` was read to its exact end with nothing
after it. An idle connection the server closed is noticed before reuse. When the close
races the next request (the server's FIN arrives with no byte of the answer), nothing
tells a server that closed an idle connection from one that read the request, acted on it
and then died; so only an idempotent request (RFC 9110 section 9.2.2) is sent once more on
a fresh connection. Any other fails as RESET and the retry policy decides, with its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Container, Mapping
from typing import TypeVar, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import AttemptFailed, ClientError
from gateway.proxy.transport import (
    BUFFER_LIMIT,
    PoolSpec,
    UpstreamResponse,
    looks_like_json,
    no_answer_within,
)
from gateway.resilience.outcome import Outcome, classify_status

# An answer's status line and headers (and a chunked body's trailer fields) must fit in
# this; more is a broken or hostile server.
HEAD_LIMIT = 64 * 1024
# Stop reading from the socket while this much body is buffered and unread: a slow client
# of a streamed answer must not make the gateway hold the whole stream in memory.
READ_HIGH_WATER = 256 * 1024
# A health probe reads a streamed answer (chunked, an event stream) up to this much so its
# connection can serve the next probe; a longer one is not worth it and is closed instead.
PROBE_BODY_LIMIT = 64 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods whose requests carry a body by definition: they always say how long it is.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Methods whose request may be sent twice with the effect of once (RFC 9110 section 9.2.2):
# only these are resent when a reused connection closes before any byte of the answer.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Request headers the transport writes itself (or that must never reach the wire twice).
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

# What the transport may write: a token method and field names, a request target without
# spaces or control characters (values are checked for CR, LF and NUL). Anything else could
# be read by the server as a second field, a second request or a different framing.
_TOKENS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")
# A reason phrase: tabs, spaces, visible characters and obs-text; never a CR, LF or other
# control character (llhttp lets those through).
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# The HTTP versions read on an HTTP/1.1 connection (llhttp also takes 0.9 and 2.0 there).
_VERSIONS = frozenset({"1.1", "1.0"})

# Body framing of one answer.
_NONE = 0  # no body: HEAD, 1xx, 204, 304
_LENGTH = 1  # exactly Content-Length bytes
_CHUNKED = 2  # chunked transfer coding
_UNTIL_CLOSE = 3  # no length: the body ends when the server closes


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one pool: connections lent out, connections kept idle, requests queued."""

    in_use: int
    idle: int
    waiting: int


class _Head:
    """A parsed response head and how its body is framed."""

    __slots__ = ("framing", "headers", "keep_alive", "length", "status")

    def __init__(
        self,
        status: int,
        headers: CIMultiDictProxy[str],
        framing: int,
        length: int,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive


class _Stop(Exception):
    """Raised by a parser callback to stop llhttp; what happened is already recorded."""


_T = TypeVar("_T")


class _Connection(asyncio.Protocol):
    """One upstream socket and the llhttp parser that reads it as bytes arrive.

    The parser's callbacks record the answer of the exchange under way (`begin` starts
    one): its final head, its body pieces not read yet, whether it is complete, or the
    failure that ended it. Readers wait with `wait()` and take what was recorded.

    A connection is `busy` while lent to a request. Anything that arrives while it is idle,
    or after the end of the answer, means the server and the gateway disagree about where
    the last answer ended, so the connection is never reused.
    """

    __slots__ = (
        "body", "busy", "chunk_ended", "complete", "dead", "eof", "error", "extra", "failure",
        "fields", "head", "head_fed", "head_size", "idle_since", "in_message", "loop", "lost",
        "method", "parser", "paused", "pending", "received", "reusable_parser", "transport", "waiter",
    )  # fmt: skip

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.busy = True
        self.dead = False
        self.eof = False
        self.lost = False
        self.paused = False
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self.parser: httptools.HttpResponseParser | None = None
        self.reusable_parser = False  # the parser stands between two answers
        self.method = ""
        self.head: _Head | None = None
        self.fields: list[tuple[bytes, bytes]] = []
        # body pieces not read yet; b"" separates two chunks of a chunked body
        self.body: list[bytes] = []
        self.chunk_ended = False
        self.pending = 0  # bytes in `body`
        self.complete = False  # the final answer was read to its end
        self.extra = False  # bytes arrived after the end of the answer
        self.failure: AttemptFailed | None = None
        self.received = 0  # bytes of this exchange's answer
        self.in_message = False  # inside an answer (interim or final), head or body
        self.head_fed = 0  # bytes fed while the current head was incomplete
        self.head_size = 0  # bytes of the current head's (or trailer's) fields

    def begin(self, method: str) -> None:
        """Start reading the answer to a request of `method` sent on this connection."""
        if not self.reusable_parser:
            parser = httptools.HttpResponseParser(self)
            # keep-alive: llhttp would stop reading after an interim answer in HTTP/1.0 (or
            # saying close), and the final answer follows it; whether a connection is
            # reused is still decided from `should_keep_alive()` and the end of the answer.
            # chunked length: a Content-Length beside chunked is ignored (RFC 9112 6.3) and
            # the connection closed after the answer, as before llhttp.
            parser.set_dangerous_leniencies(lenient_keep_alive=True, lenient_chunked_length=True)
            self.parser = parser
        self.reusable_parser = False
        self.chunk_ended = False
        self.method = method
        self.head = None
        self.body = []
        self.pending = 0
        self.complete = False
        self.extra = False
        self.failure = None
        self.received = 0
        self.in_message = False
        self.head_fed = 0
        self.head_size = 0

    # --- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but offer its methods
        self.transport = cast(asyncio.Transport, transport)
        # kept: asyncio.get_running_loop() costs a getpid() system call each time
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if not self.busy or parser is None:
            # idle, or not asked yet: whatever this is, it answers no request of ours
            self.abort()
            return
        if self.complete or self.failure is not None:
            # a second answer nobody asked for, or more of a broken one
            self.extra = self.complete
            return
        self.received += len(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._parse_error(e)
        if self.head is None and self.failure is None:
            self.head_fed += len(data)
            if self.head_fed > HEAD_LIMIT:
                self.failure = AttemptFailed(Outcome.MALFORMED, "response head too large")
        if self.pending > READ_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too: a half-closed upstream connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.parser = None  # no more bytes; and no cycle through the parser's callbacks
        self._wake()

    def _parse_error(self, e: Exception) -> None:
        if self.complete:
            self.extra = True  # not part of the answer: whatever it is, it ends reuse
        elif self.failure is None:
            # refused by llhttp itself (a callback records its own reason first)
            self.failure = AttemptFailed(Outcome.MALFORMED, f"malformed response: {e}")

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- llhttp callbacks -----------------------------------------------------------------

    def _refuse(self, message: str) -> None:
        self.failure = AttemptFailed(Outcome.MALFORMED, message)
        raise _Stop

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
            raise _Stop
        self.in_message = True
        self.fields = []
        self.head_size = 0

    def on_status(self, reason: bytes) -> None:
        # called once per piece of the reason phrase; each piece must be clean
        if _REASON.fullmatch(reason) is None:
            self._refuse(f"bad status line: reason phrase {reason[:40]!r}")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > HEAD_LIMIT:
            self._refuse("response head too large")
        if self.head is None:
            self.fields.append((name, value))
        # a trailer field (after the body): checked by llhttp, bounded here, then ignored

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            if status < 100:
                self._refuse(f"bad status code {status}")
            if status == 101:
                self._refuse("unrequested protocol switch (101)")
            if parser.get_http_version() not in _VERSIONS:
                self._refuse(f"bad status line: HTTP/{parser.get_http_version()}")
            return  # an interim answer: llhttp reads on to the next one
        self.head_size = 0  # from here on: trailer fields
        try:
            self.head = _make_head(status, parser, self.fields, self.method)
        except AttemptFailed as e:
            self.failure = e
            raise _Stop from None
        if self.method == "HEAD":
            # llhttp does not know the request: the answer ends with its head
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if self.complete:
            self.extra = True
            raise _Stop
        body = self.body
        if self.chunk_ended:
            self.chunk_ended = False
            if body:
                body.append(b"")
        body.append(data)
        self.pending += len(data)

    def on_chunk_complete(self) -> None:
        self.chunk_ended = True

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.head is None or self.complete:
            return  # an interim answer, or the answer to a HEAD (whose length was ignored)
        self.complete = True
        self.reusable_parser = True

    # --- used by the request side ---------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not (self.eof or self.lost or self.dead)

    @property
    def ended(self) -> bool:
        """True once no more bytes can arrive."""
        return self.eof or self.lost

    def wait(self) -> asyncio.Future[None]:
        """A future that resolves when something is recorded or the connection ends: await
        it, then check which. A plain future rather than a coroutine: no frame of its own to
        resume on every answer."""
        transport = self.transport
        assert transport is not None and self.loop is not None
        if self.paused:
            self.paused = False
            transport.resume_reading()
        # `_wake` clears it before resolving it; one left by a cancelled reader is done, and
        # replaced by the next reader's
        waiter = self.waiter = self.loop.create_future()
        return waiter

    def take(self) -> bytes:
        """The next piece of body: what is buffered of one chunk, or all that is buffered."""
        body = self.body
        if b"" in body:
            while body[0] == b"":
                del body[0]
            cut = body.index(b"") if b"" in body else len(body)
            piece = body[0] if cut == 1 else b"".join(body[:cut])
            del body[:cut]
        else:
            piece = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
        self.pending -= len(piece)
        if self.paused and self.pending <= READ_HIGH_WATER:
            self.resume()
        return piece

    def loop_time(self) -> float:
        """The event loop's clock (idle times are kept on it, as the idle sweep's timer is);
        read through the loop kept at connect, not `asyncio.get_running_loop()`."""
        loop = self.loop
        return loop.time() if loop is not None else asyncio.get_running_loop().time()

    def take_all(self) -> bytes:
        """Every body piece buffered, as one (a buffered answer read to its end)."""
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.pending = 0
        return data

    def resume(self) -> None:
        """Read from the socket again: an idle connection must see the server's close."""
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the socket now, unsent data included; the connection is never reused."""
        self.dead = True
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def expire(self, timeout: float) -> None:
        """The attempt's time ran out (its timer calls this): whatever the reader waits for
        fails with TIMEOUT, and the reader drops the connection."""
        if not self.complete and self.failure is None:
            self.failure = AttemptFailed(Outcome.TIMEOUT, no_answer_within(timeout))
            self._wake()

    def ended_failure(self, what: str) -> AttemptFailed:
        """The failure to report when the connection ended while `what` was expected."""
        if self.error is not None:
            return AttemptFailed(Outcome.RESET, f"connection reset while reading {what}")
        return AttemptFailed(Outcome.MALFORMED, f"connection closed before the end of {what}")


def _make_head(
    status: int,
    parser: httptools.HttpResponseParser,
    fields: list[tuple[bytes, bytes]],
    method: str,
) -> _Head:
    """The final head from what llhttp read; raises `AttemptFailed(MALFORMED)` for what the
    client refuses beyond llhttp: another HTTP version, a transfer coding other than chunked.
    """
    version = parser.get_http_version()
    if version not in _VERSIONS:
        raise AttemptFailed(Outcome.MALFORMED, f"bad status line: HTTP/{version}")
    # llhttp strips the whitespace before a value, not after it
    headers = CIMultiDictProxy(
        CIMultiDict(
            [
                (n.decode("latin-1"), v.rstrip(b" \t").decode("utf-8", "surrogateescape"))
                for n, v in fields
            ]
        )
    )
    # an HTTP/1.0 answer is never reused, `Connection: keep-alive` or not: too few servers
    # get its rules right to be worth the risk. llhttp says close for an answer whose body
    # runs to the close, and for a `close` token in Connection.
    keep_alive = version == "1.1" and parser.should_keep_alive()
    if method == "HEAD" or status == 204 or status == 304:
        if method == "HEAD" and version == "1.1" and not keep_alive:
            # llhttp expects a body after a HEAD answer without a length: only the
            # Connection field decides
            keep_alive = not any(
                t.strip(" \t").lower() == "close"
                for value in headers.getall("Connection", ())
                for t in value.split(",")
            )
        return _Head(status, headers, _NONE, 0, keep_alive)
    te = headers.get("Transfer-Encoding")
    if te is not None:
        codings = [
            c
            for joined in headers.getall("Transfer-Encoding")
            for c in (p.strip(" \t").lower() for p in joined.split(","))
            if c
        ]
        # The request asked for no transfer coding (it sends no TE field), and one the
        # gateway does not undo would reach the client as a body it cannot read, since
        # Transfer-Encoding is not forwarded.
        if codings != ["chunked"]:
            raise AttemptFailed(Outcome.MALFORMED, f"unrequested Transfer-Encoding {te!r}")
        # a length beside a transfer coding is ignored, but says the sender is confused
        if "Content-Length" in headers:
            keep_alive = False
        return _Head(status, headers, _CHUNKED, 0, keep_alive)
    length = headers.get("Content-Length")
    if length is None:
        return _Head(status, headers, _UNTIL_CLOSE, 0, False)
    # llhttp vouched for it: digits only, one field, no overflow
    return _Head(status, headers, _LENGTH, int(length), keep_alive)


class _Pool:
    """At most `limit` connections lent out at once; queued requests are served in order.

    A freed slot is handed straight to the oldest waiter (with the connection when it can
    be reused), so a queued request never competes with newcomers and nobody polls.
    """

    __slots__ = (
        "_closed", "_connect", "_idle", "_idle_timeout", "_in_use", "_limit", "_sweep",
        "_waiters",
    )  # fmt: skip

    def __init__(self, pool: PoolSpec, connect: _Connector) -> None:
        self._limit = max(1, pool.max_connections)
        self._idle_timeout = pool.idle_timeout
        self._connect = connect
        self._idle: list[_Connection] = []  # a stack: the most recently used is reused first
        self._in_use = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def stats(self) -> PoolStats:
        idle = sum(1 for c in self._idle if c.usable)
        return PoolStats(self._in_use, idle, len(self._waiters))

    def take_idle(self) -> _Connection | None:
        """An idle connection lent to the caller at once, or None (then `acquire` waits).

        The same obligation as `acquire`: give it back with `release` or `discard`.
        """
        idle = self._idle
        if idle:
            now = idle[-1].loop_time()
            while idle:
                conn = idle.pop()
                if conn.usable and now - conn.idle_since < self._idle_timeout:
                    conn.busy = True
                    self._in_use += 1
                    return conn
                conn.abort()
        return None

    async def acquire(self) -> tuple[_Connection, bool]:
        """A connection lent to the caller, and whether it served an earlier request.

        The caller must give it back with `release` or `discard` exactly once, cancelled or
        not. Raises `AttemptFailed(CONNECT_FAILURE)` when a new connection cannot be opened.
        """
        conn = self.take_idle()
        if conn is not None:
            return conn, True
        if self._in_use < self._limit:
            self._in_use += 1
            return await self._open_in_slot(), False
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # a slot was handed over just as the caller gave up: pass it on
                self._free(waiter.result())
            else:
                # `_free` may already have dropped this cancelled waiter from the queue
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        if handed is not None:
            if handed.usable and not handed.extra:
                return handed, True
            handed.abort()
        return await self._open_in_slot(), False

    async def reopen(self, conn: _Connection) -> _Connection:
        """Replace a broken connection by a fresh one in the same slot.

        On failure the slot is still the caller's: it must `discard` the old connection.
        """
        conn.abort()
        return await self._connect()

    async def _open_in_slot(self) -> _Connection:
        # the caller already counts this connection in `_in_use`
        try:
            return await self._connect()
        except BaseException:
            self._free(None)
            raise

    def release(self, conn: _Connection) -> None:
        """Give back a connection whose answer was read to its exact end."""
        if self._closed or not conn.usable or conn.extra:
            conn.abort()
            self._free(None)
            return
        # a large answer may have ended while reading was paused
        conn.resume()
        self._free(conn)

    def discard(self, conn: _Connection) -> None:
        """Give back a connection in an unknown state: it is closed, its slot freed."""
        conn.abort()
        self._free(None)

    def _free(self, conn: _Connection | None) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # the slot (and connection) change hands
                return
        self._in_use -= 1
        if conn is None:
            return
        conn.busy = False
        conn.idle_since = conn.loop_time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_at(
                conn.idle_since + self._idle_timeout, self._expire
            )

    def _expire(self) -> None:
        """Close connections idle for `idle_timeout`; runs while any connection is idle."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._idle_timeout
        idle = self._idle
        keep = []
        for conn in idle:
            if conn.usable and conn.idle_since > cutoff:
                keep.append(conn)
            else:
                conn.abort()
        idle[:] = keep
        if keep:
            oldest = min(c.idle_since for c in keep)
            self._sweep = loop.call_at(oldest + self._idle_timeout, self._expire)

    def close(self) -> None:
        """Close idle connections; connections in use are closed when given back."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.drop_idle()

    def drop_idle(self) -> None:
        """Close the idle connections; the pool stays open for new ones."""
        for conn in self._idle:
            conn.abort()
        self._idle.clear()


class _Connector:
    """Opens connections to one endpoint, TLS included, within the connect timeout."""

    __slots__ = ("_host", "_port", "_server_hostname", "_ssl", "_timeout")

    def __init__(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None, timeout: float
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server_hostname = host if ssl_context is not None else None
        self._timeout = timeout

    async def __call__(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            raise AttemptFailed(
                Outcome.CONNECT_FAILURE, f"connect timeout after {self._timeout:g}s"
            ) from None
        except OSError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect failed: {e}") from None
        return conn


class _FirstByteLost(Exception):
    """A reused connection ended cleanly before any byte of the answer: most likely the
    server closed it while idle, but it may also have read the request, acted on it and
    gone away; so the caller resends only idempotent requests."""


class _HeadReader:
    """llhttp callbacks for `parse_head`: the first final head of a header block."""

    __slots__ = ("fields", "head", "method", "parser")

    def __init__(self, method: str) -> None:
        self.method = method
        self.fields: list[tuple[bytes, bytes]] = []
        self.head: _Head | None = None
        self.parser = httptools.HttpResponseParser(self)
        # as `_Connection.begin` sets it up
        self.parser.set_dangerous_leniencies(lenient_keep_alive=True, lenient_chunked_length=True)

    def on_message_begin(self) -> None:
        self.fields = []

    def on_status(self, reason: bytes) -> None:
        if _REASON.fullmatch(reason) is None:
            raise AttemptFailed(Outcome.MALFORMED, f"bad status line: reason {reason[:40]!r}")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 100:
            raise AttemptFailed(Outcome.MALFORMED, f"bad status code {status}")
        if status == 101:
            raise AttemptFailed(Outcome.MALFORMED, "unrequested protocol switch (101)")
        if status >= 200 and self.head is None:
            self.head = _make_head(status, self.parser, self.fields, self.method)
            raise _Stop


def parse_head(data: bytes, method: str) -> _Head:
    """Parse a status line and header block (`data` ends with the CRLF of the last field),
    as the transport reads the head of an answer to a request of `method`.

    Raises `AttemptFailed(MALFORMED)` for anything llhttp refuses in strict mode, and for
    what the client refuses beyond it (see `_make_head`). The transport does not call this:
    it parses as bytes arrive; this reads one head at rest, for tests and tools.
    """
    reader = _HeadReader(method)
    try:
        reader.parser.feed_data(data + b"\r\n")
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        if reader.head is None:
            cause = e.__context__
            if isinstance(cause, AttemptFailed):
                raise cause from None
            raise AttemptFailed(Outcome.MALFORMED, f"malformed response head: {e}") from None
    if reader.head is None:
        raise AttemptFailed(Outcome.MALFORMED, "no final response head")
    return reader.head


async def _within(opening: Awaitable[_T], deadline: float, timeout: float) -> _T:
    """`opening` (a connection from the pool, or a new one), failed with TIMEOUT at `deadline`."""
    try:
        async with asyncio.timeout_at(deadline):
            return await opening
    except TimeoutError:
        raise AttemptFailed(Outcome.TIMEOUT, no_answer_within(timeout)) from None


def _head_so_far(conn: _Connection) -> _Head | None:
    """The final response head if it has arrived, None if it is still to come; raises when
    it never will (interim answers are skipped by the parser).

    Not a coroutine: the caller waits on `conn.wait()` between looks, so a request pays no
    frame of its own for reading the head.
    """
    head = conn.head
    if head is not None:
        return head
    if conn.failure is not None:
        raise conn.failure
    if conn.ended:
        if conn.error is not None:
            raise AttemptFailed(Outcome.RESET, f"connection reset: {conn.error}")
        if not conn.received:
            raise _FirstByteLost
        if conn.in_message:
            raise AttemptFailed(Outcome.MALFORMED, "connection closed inside the response head")
        # only interim answers came
        raise AttemptFailed(Outcome.RESET, "server closed the connection without answering")
    return None


class H1Stream:
    """The body of a streamed answer, read as it arrives.

    Read with `read_chunk` (b"" at the end; failures as `AttemptFailed`). The holder must
    call `close()` (abandoned or failed) or `release()` (read to the end); both are
    idempotent, and the connection goes back to the pool by itself once the end has been
    read.
    """

    __slots__ = ("_conn", "_done", "_framing", "_keep_alive", "_pool", "_settled", "headers")

    def __init__(self, conn: _Connection, pool: _Pool, head: _Head) -> None:
        self.headers = head.headers
        self._conn = conn
        self._pool = pool
        self._framing = head.framing
        self._keep_alive = head.keep_alive
        self._done = conn.complete and not conn.body
        self._settled = False

    @property
    def at_eof(self) -> bool:
        return self._done

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        """The next piece of the body (b"" at its end): what has arrived of one chunk of a
        chunked body, or all that has arrived of another.

        Raises `AttemptFailed` with RESET, MALFORMED, or TIMEOUT when nothing arrived within
        `timeout` seconds; the connection is then already closed.
        """
        if self._done:
            return b""
        try:
            if timeout is None:
                data = await self._read()
            else:
                async with asyncio.timeout(timeout):
                    data = await self._read()
        except TimeoutError:
            self.close()
            raise AttemptFailed(Outcome.TIMEOUT, f"no data within {timeout:g}s") from None
        except AttemptFailed:
            self.close()
            raise
        return data

    def close(self) -> None:
        if not self._settled:
            self._settled = True
            self._pool.discard(self._conn)

    def release(self) -> None:
        """Hand the connection back; one not read to the end is closed instead."""
        if not self._done:
            self.close()
        self._settle()

    def _end(self) -> None:
        # the whole body was read: the connection is free for the next request
        self._done = True
        self._settle()

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        if self._keep_alive:
            self._pool.release(self._conn)
        else:
            self._pool.discard(self._conn)

    async def _read(self) -> bytes:
        conn = self._conn
        while True:
            if conn.body:
                data = conn.take()
                if self._framing == _LENGTH and conn.complete and not conn.body:
                    # as many bytes as announced: the end is known without another read
                    self._end()
                return data
            if conn.complete:
                self._end()
                return b""
            if conn.failure is not None:
                raise conn.failure
            if conn.ended:
                if self._framing == _UNTIL_CLOSE and conn.error is None:
                    self._end()
                    return b""
                raise conn.ended_failure(
                    "a chunk" if self._framing == _CHUNKED else "the response body"
                )
            await conn.wait()


class H1Transport:
    """Sends attempts to one endpoint over a bounded keep-alive pool of HTTP/1.1 connections.

    `url` is the endpoint's base URL. `ssl_context` overrides the default certificate
    verification of https endpoints (a private CA, for instance).
    """

    __slots__ = (
        "_base", "_connector", "_host_line", "_pool", "_probe_pool", "check_json", "pool", "url",
    )  # fmt: skip

    def __init__(
        self,
        url: str,
        pool: PoolSpec,
        *,
        check_json: bool,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.pool = pool
        self.check_json = check_json
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[scheme]
        shown = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]:
            shown = f"{shown}:{port}"
        self._host_line = f" HTTP/1.1\r\nHost: {shown}\r\n"
        self._base = parts.path.rstrip("/")
        tls = None
        if scheme == "https":
            tls = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._connector = _Connector(host, port, tls, pool.connect_timeout)
        self._pool = _Pool(pool, self._connector)
        # health probes keep one connection of their own (Envoy's HTTP health checker does):
        # a probe never queues behind traffic in a full pool, nor takes a slot from it
        self._probe_pool = _Pool(dataclasses.replace(pool, max_connections=1), self._connector)

    def stats(self) -> PoolStats:
        return self._pool.stats()

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
        *,
        check_json: bool | None = None,
        pool: _Pool | None = None,
    ) -> UpstreamResponse:
        """One attempt, given at most `timeout` seconds up to a buffered answer's last byte (or
        a streamed answer's head); the caller classifies nothing further.

        Raises `AttemptFailed` for every failure that produced no usable HTTP answer, TIMEOUT
        included. HTTP error statuses are returned (with their outcome), not raised, so they
        can be passed through. A streamed answer (`stream` set) must be closed or released by
        the caller. `check_json` and `pool` are the health probe's (no JSON check, its own
        connection). The time limit is one timer that fails the connection's reader, not an
        `asyncio.timeout` around the call: that costs about 4 µs per attempt, this under one.
        """
        request = self._encode(method, path_qs, headers, body)
        if check_json is None:
            check_json = self.check_json
        if pool is None:
            pool = self._pool
        idle = pool.take_idle()
        # the loop an idle connection kept saves the getpid() behind get_running_loop()
        loop = idle.loop if idle is not None and idle.loop else asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else 0.0
        if idle is not None:
            conn, reused = idle, True
        elif timeout is None:
            conn, reused = await pool.acquire()
        else:
            conn, reused = await _within(pool.acquire(), deadline, timeout)
        timer: asyncio.TimerHandle | None = None
        try:
            if timeout is not None:
                timer = loop.call_at(deadline, conn.expire, timeout)
            while True:
                transport = conn.transport
                assert transport is not None
                conn.begin(method)
                if body and len(body) > 16384:
                    transport.writelines((request, body))
                else:
                    transport.write(request + body if body else request)
                try:
                    head = _head_so_far(conn)
                    while head is None:
                        await conn.wait()
                        head = _head_so_far(conn)
                    break
                except _FirstByteLost:
                    if not reused or method not in _IDEMPOTENT:
                        raise AttemptFailed(
                            Outcome.RESET, "server closed the connection without answering"
                        ) from None
                    reused = False
                    if timeout is None:
                        conn = await pool.reopen(conn)
                    else:
                        if timer is not None:
                            timer.cancel()
                        conn = await _within(pool.reopen(conn), deadline, timeout)
                        timer = loop.call_at(deadline, conn.expire, timeout)
            framing = head.framing
            status = head.status
            outcome = classify_status(status)
            ctype = head.headers.get("Content-Type", "")
            if framing == _NONE:
                data = b""
            elif (
                framing != _LENGTH
                or head.length > BUFFER_LIMIT
                or ctype.startswith("text/event-stream")
            ):
                failure = conn.failure
                if failure is not None and failure.outcome is Outcome.TIMEOUT:
                    # the time ran out between the head's arrival and this reader's turn:
                    # bytes after it may already be dropped, so no stream is handed out (a
                    # TIMEOUT now can still be retried; a cut stream could not)
                    raise failure
                stream = H1Stream(conn, pool, head)
                if stream.at_eof:
                    stream.release()
                return UpstreamResponse(status, head.headers, None, stream, outcome)
            else:
                # the body most often came with the head: then no coroutine to read it
                data = conn.take_all() if conn.complete else await _read_body(conn, head.length)
        except BaseException:
            pool.discard(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if head.keep_alive:
            pool.release(conn)
        else:
            pool.discard(conn)
        if (
            check_json
            and outcome is Outcome.SUCCESS
            and "json" in ctype
            and not looks_like_json(data, head.headers.get("Content-Encoding"))
        ):
            raise AttemptFailed(Outcome.MALFORMED, "backend answered with malformed JSON")
        return UpstreamResponse(status, head.headers, data, None, outcome)

    async def get_status(
        self, path: str, timeout: float, expect: Container[int] | None = None
    ) -> int:
        """A health probe: the status of a GET, or raises `AttemptFailed`.

        Probes reuse one kept-alive connection of their own, so N probes of a healthy
        endpoint cost one TCP connection, not N. The answer is read to its end (a streamed
        one up to `PROBE_BODY_LIMIT`) so the connection can serve the next probe. After a
        failed probe (no answer within `timeout`, a broken answer, or a status outside
        `expect`) the connection is closed: the next probe tests a fresh one, as a new
        client would.
        """
        pool = self._probe_pool
        try:
            async with asyncio.timeout(timeout):
                resp = await self.send("GET", path, {}, b"", check_json=False, pool=pool)
                stream = resp.stream
                if stream is not None:
                    try:
                        read = 0
                        while read <= PROBE_BODY_LIMIT:
                            chunk = await stream.read_chunk()
                            if not chunk:
                                break
                            read += len(chunk)
                    finally:
                        stream.release()  # read to its end: kept; otherwise closed
        except TimeoutError:
            raise AttemptFailed(Outcome.TIMEOUT, "health check timed out") from None
        if expect is not None and resp.status not in expect:
            pool.drop_idle()
        return resp.status

    async def close(self) -> None:
        """Close idle connections now; those in use close when their answers end."""
        self._pool.close()
        self._probe_pool.close()

    def _encode(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [method, " ", self._base, path_qs, self._host_line]
        fields = 2  # the request line and Host
        own = _OWN_HEADERS
        for name, value in headers.items():
            if name.lower() in own:
                continue
            lines += (name, ": ", value, "\r\n")
            fields += 1
        if body or method in _BODY_METHODS:
            lines += ("Content-Length: ", str(len(body)), "\r\n")
            fields += 1
        lines.append("\r\n")
        text = "".join(lines)
        # exactly one line per field: a CR, LF or NUL inside a name or value would forge one
        if (
            text.count("\r\n") != fields + 1
            or text.count("\n") != fields + 1
            or text.count("\r") != fields + 1
            or "\0" in text
            # every name and the method at once: a token run has no delimiter to slip in
            or _TOKENS.fullmatch(method + "".join(headers)) is None
            or "" in headers
            or _TARGET.fullmatch(self._base + path_qs) is None
        ):
            raise ClientError(
                "the method, the path or a request header cannot be sent as HTTP/1.1"
                " (a line break, a space in the path, or a name that is not a token)"
            )
        return text.encode("utf-8", "surrogateescape")


async def _read_body(conn: _Connection, length: int) -> bytes:
    """The whole body of an answer of `length` bytes."""
    while not conn.complete:
        if conn.failure is not None:
            raise conn.failure
        if conn.ended:
            if conn.error is not None:
                raise AttemptFailed(
                    Outcome.RESET, f"connection reset while reading the body: {conn.error}"
                )
            raise AttemptFailed(
                Outcome.MALFORMED, f"truncated response body: {conn.pending} of {length} bytes"
            )
        await conn.wait()
    return conn.take_all()


__all__ = ["H1Stream", "H1Transport", "PoolStats", "parse_head"]
