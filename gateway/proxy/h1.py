"""A lean HTTP/1.1 upstream transport: one bounded keep-alive pool per endpoint.

It implements `gateway.proxy.transport.Transport` at a fraction of aiohttp's CPU cost per
request: the request is encoded in one string and written in one call, the response head
is parsed with a few byte scans over one buffer, and a small answer costs one wake-up.

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
from collections.abc import Container, Mapping
from typing import cast
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import AttemptFailed, ClientError
from gateway.proxy.transport import BUFFER_LIMIT, PoolSpec, UpstreamResponse, looks_like_json
from gateway.resilience.outcome import Outcome, classify_status

# An answer's status line and headers must fit in this; more is a broken or hostile server.
HEAD_LIMIT = 64 * 1024
# A chunk-size line (size, extensions) or trailer line longer than this is bad framing.
CHUNK_LINE_LIMIT = 4096
# Stop reading from the socket while this much is buffered and unread: a slow client of a
# streamed answer must not make the gateway hold the whole stream in memory.
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

# RFC 9110 field lines: a token name, a colon, then visible characters, spaces, tabs and
# obs-text. No folding, no bare CR or LF, no other control characters.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# What the transport may write: a token method and field names, a request target without
# spaces or control characters (values are checked for CR, LF and NUL). Anything else could
# be read by the server as a second field, a second request or a different framing.
_TOKENS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# A reason phrase: tabs, spaces, visible characters and obs-text; never a CR or LF.
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

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


class _Connection(asyncio.Protocol):
    """One upstream socket: buffers what arrives and wakes the one reader waiting for it.

    A connection is `busy` while lent to a request. Anything that arrives while it is idle
    means the server and the gateway disagree about where the last answer ended, so the
    connection is dropped.
    """

    __slots__ = (
        "buf", "busy", "dead", "eof", "error", "idle_since", "lost", "paused", "transport",
        "waiter",
    )  # fmt: skip

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.busy = True
        self.dead = False
        self.eof = False
        self.lost = False
        self.paused = False
        self.error: BaseException | None = None
        self.idle_since = 0.0

    # --- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but offer its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.abort()
            return
        self.buf += data
        if len(self.buf) > READ_HIGH_WATER and not self.paused and self.transport is not None:
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
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- used by the request side ---------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not (self.eof or self.lost or self.dead)

    @property
    def ended(self) -> bool:
        """True once no more bytes can arrive."""
        return self.eof or self.lost

    async def more(self) -> bool:
        """Wait until more bytes are buffered; False when the connection has ended instead."""
        if self.eof or self.lost:
            return False
        transport = self.transport
        assert transport is not None
        if self.paused:
            self.paused = False
            transport.resume_reading()
        size = len(self.buf)
        waiter = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            self.waiter = None
        return len(self.buf) > size or not (self.eof or self.lost)

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

    def ended_failure(self, what: str) -> AttemptFailed:
        """The failure to report when the connection ended while `what` was expected."""
        if self.error is not None:
            return AttemptFailed(Outcome.RESET, f"connection reset while reading {what}")
        return AttemptFailed(Outcome.MALFORMED, f"connection closed before the end of {what}")


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

    async def acquire(self) -> tuple[_Connection, bool]:
        """A connection lent to the caller, and whether it served an earlier request.

        The caller must give it back with `release` or `discard` exactly once, cancelled or
        not. Raises `AttemptFailed(CONNECT_FAILURE)` when a new connection cannot be opened.
        """
        idle = self._idle
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()
                if conn.usable and now - conn.idle_since < self._idle_timeout:
                    conn.busy = True
                    self._in_use += 1
                    return conn, True
                conn.abort()
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
            if handed.usable and not handed.buf:
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
        if self._closed or not conn.usable or conn.buf:
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
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_at(conn.idle_since + self._idle_timeout, self._expire)

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


def parse_head(data: bytes, method: str) -> _Head:
    """Parse a status line and header block (`data` ends with the CRLF of the last field).

    Raises `AttemptFailed(MALFORMED)` for anything RFC 9112 does not allow a sender to
    produce: a bad status line, folded or malformed fields, contradictory lengths.
    """
    end = data.find(b"\r\n")
    line = data[:end]
    if (
        len(line) < 12
        or not line.startswith(b"HTTP/1.")
        or line[7] not in b"01"
        or line[8] != 0x20
        or not line[9:12].isdigit()
        or (len(line) > 12 and line[12] != 0x20)
        or _REASON.fullmatch(line, 13) is None
    ):
        raise AttemptFailed(Outcome.MALFORMED, f"bad status line {bytes(line[:80])!r}")
    status = int(line[9:12])
    if status < 100:
        raise AttemptFailed(Outcome.MALFORMED, f"bad status code {status}")
    if _FIELDS.fullmatch(data, end + 2) is None:
        raise AttemptFailed(Outcome.MALFORMED, "malformed response header block")
    # `_FIELDS` vouched for the shape: every line is a name, a colon and a value
    fields = data[end + 2 :].decode("utf-8", "surrogateescape").split("\r\n")
    pairs = []
    for field in fields[:-1]:
        name, _, value = field.partition(":")
        pairs.append((name, value.strip(" \t")))
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    # an HTTP/1.0 answer is never reused, `Connection: keep-alive` or not: too few servers
    # get its rules right to be worth the risk
    keep_alive = line[7] == 0x31
    if keep_alive and "Connection" in headers:
        for value in headers.getall("Connection"):
            if any(t.strip(" \t").lower() == "close" for t in value.split(",")):
                keep_alive = False
    if method == "HEAD" or status < 200 or status == 204 or status == 304:
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
    lengths = headers.getall("Content-Length", None)
    if lengths is None:
        return _Head(status, headers, _UNTIL_CLOSE, 0, False)
    values = {v.strip() for joined in lengths for v in joined.split(",")}
    if len(values) != 1:
        raise AttemptFailed(Outcome.MALFORMED, f"conflicting Content-Length {lengths!r}")
    value = values.pop()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise AttemptFailed(Outcome.MALFORMED, f"bad Content-Length {value!r}")
    return _Head(status, headers, _LENGTH, int(value), keep_alive)


class _FirstByteLost(Exception):
    """A reused connection ended cleanly before any byte of the answer: most likely the
    server closed it while idle, but it may also have read the request, acted on it and
    gone away; so the caller resends only idempotent requests."""


async def _read_head(conn: _Connection, method: str) -> _Head:
    """Read the final response head, skipping interim (1xx) answers."""
    buf = conn.buf
    first = True
    searched = 0
    while True:
        end = buf.find(b"\r\n\r\n", searched)
        if end < 0:
            if len(buf) > HEAD_LIMIT:
                raise AttemptFailed(Outcome.MALFORMED, "response head too large")
            searched = max(0, len(buf) - 3)
            if not await conn.more():
                if first and not buf and conn.error is None:
                    raise _FirstByteLost
                if conn.error is not None:
                    raise AttemptFailed(Outcome.RESET, f"connection reset: {conn.error}")
                if buf:
                    raise AttemptFailed(
                        Outcome.MALFORMED, "connection closed inside the response head"
                    )
                raise AttemptFailed(Outcome.RESET, "server closed the connection without answering")
            first = False
            continue
        if end > HEAD_LIMIT:
            raise AttemptFailed(Outcome.MALFORMED, "response head too large")
        data = bytes(buf[: end + 2])
        del buf[: end + 4]
        head = parse_head(data, method)
        if head.status >= 200:
            return head
        if head.status == 101:
            raise AttemptFailed(Outcome.MALFORMED, "unrequested protocol switch (101)")
        first = False
        searched = 0


class H1Stream:
    """The body of a streamed answer, read as it arrives.

    Read with `read_chunk` (b"" at the end; failures as `AttemptFailed`). The holder must call `close()` (abandoned or failed) or `release()` (read
    to the end); both are idempotent, and the connection goes back to the pool by itself
    once the end has been read.
    """

    __slots__ = (
        "_conn",
        "_done",
        "_framing",
        "_keep_alive",
        "_left",
        "_pool",
        "_settled",
        "headers",
    )

    def __init__(self, conn: _Connection, pool: _Pool, head: _Head) -> None:
        self.headers = head.headers
        self._conn = conn
        self._pool = pool
        self._framing = head.framing
        self._keep_alive = head.keep_alive
        # bytes left in the body (_LENGTH) or in the current chunk (_CHUNKED; -1: a size
        # line is next, -2: the CRLF after a chunk's data is next)
        self._left = head.length if head.framing == _LENGTH else -1
        self._done = head.framing == _LENGTH and head.length == 0
        self._settled = False

    @property
    def at_eof(self) -> bool:
        return self._done

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        """The next piece of the body (b"" at its end).

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
        buf = conn.buf
        framing = self._framing
        if framing == _LENGTH:
            if not buf and not await conn.more():
                raise conn.ended_failure("the response body")
            data = _take(buf, self._left)
            self._left -= len(data)
            if self._left == 0:
                self._end()
            return data
        if framing == _UNTIL_CLOSE:
            if not buf and not await conn.more():
                if conn.error is not None:
                    raise conn.ended_failure("the response body")
                self._end()
                return b""
            data = bytes(buf)
            buf.clear()
            return data
        return await self._read_chunked()

    async def _read_chunked(self) -> bytes:
        conn = self._conn
        buf = conn.buf
        while True:
            if self._left > 0:
                if not buf and not await conn.more():
                    raise conn.ended_failure("a chunk")
                data = _take(buf, self._left)
                self._left -= len(data)
                if self._left == 0:
                    self._left = -2
                return data
            if self._left == -2:
                while len(buf) < 2:
                    if not await conn.more():
                        raise conn.ended_failure("a chunk")
                if buf[:2] != b"\r\n":
                    raise AttemptFailed(Outcome.MALFORMED, "chunk data not followed by CRLF")
                del buf[:2]
                self._left = -1
            line = await self._line()
            size_text, semi, _ = line.partition(b";")
            if semi:
                # whitespace may come before an extension (RFC 9112 BWS), never elsewhere
                size_text = size_text.rstrip(b" \t")
            if _HEX.fullmatch(size_text) is None:
                raise AttemptFailed(Outcome.MALFORMED, f"bad chunk size line {line[:40]!r}")
            size = int(size_text, 16)
            if size:
                self._left = size
                continue
            # the last chunk: trailer fields (checked, then ignored) up to an empty line
            while trailer := await self._line():
                if _FIELDS.fullmatch(trailer + b"\r\n") is None:
                    raise AttemptFailed(Outcome.MALFORMED, "malformed trailer field")
            self._end()
            return b""

    async def _line(self) -> bytes:
        conn = self._conn
        buf = conn.buf
        searched = 0
        while True:
            end = buf.find(b"\r\n", searched)
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 2]
                if end > CHUNK_LINE_LIMIT:
                    break
                return line
            if len(buf) > CHUNK_LINE_LIMIT:
                break
            searched = max(0, len(buf) - 1)
            if not await conn.more():
                raise conn.ended_failure("the chunk framing")
        raise AttemptFailed(Outcome.MALFORMED, "chunk framing line too long")


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
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> UpstreamResponse:
        """One attempt. The caller bounds it with its own timeout and classifies nothing further.

        Raises `AttemptFailed` for every failure that produced no usable HTTP answer. HTTP error
        statuses are returned (with their outcome), not raised, so they can be passed through.
        A streamed answer (`stream` set) must be closed or released by the caller.
        """
        return await self._send(method, path_qs, headers, body, self.check_json)

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
                resp = await self._send("GET", path, {}, b"", False, pool)
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

    async def _send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        check_json: bool,
        pool: _Pool | None = None,
    ) -> UpstreamResponse:
        request = self._encode(method, path_qs, headers, body)
        if pool is None:
            pool = self._pool
        conn, reused = await pool.acquire()
        try:
            while True:
                transport = conn.transport
                assert transport is not None
                if body and len(body) > 16384:
                    transport.writelines((request, body))
                else:
                    transport.write(request + body if body else request)
                try:
                    head = await _read_head(conn, method)
                    break
                except _FirstByteLost:
                    if not reused or method not in _IDEMPOTENT:
                        raise AttemptFailed(
                            Outcome.RESET, "server closed the connection without answering"
                        ) from None
                    reused = False
                    conn = await pool.reopen(conn)
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
                stream = H1Stream(conn, pool, head)
                if stream.at_eof:
                    stream.release()
                return UpstreamResponse(status, head.headers, None, stream, outcome)
            else:
                data = await _read_body(conn, head.length)
        except BaseException:
            pool.discard(conn)
            raise
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


async def _read_body(conn: _Connection, length: int) -> bytes:
    """Exactly `length` bytes of body; the rest of the buffer (if any) stays."""
    buf = conn.buf
    while len(buf) < length:
        if not await conn.more():
            if conn.error is not None:
                raise AttemptFailed(
                    Outcome.RESET, f"connection reset while reading the body: {conn.error}"
                )
            raise AttemptFailed(
                Outcome.MALFORMED, f"truncated response body: {len(buf)} of {length} bytes"
            )
    return _take(buf, length)


def _take(buf: bytearray, n: int) -> bytes:
    """Up to `n` bytes from the front of `buf`, copied once when they are all of it."""
    if n >= len(buf):
        data = bytes(buf)
        buf.clear()
        return data
    data = bytes(buf[:n])  # a partial take copies the part taken twice
    del buf[:n]
    return data


__all__ = ["H1Stream", "H1Transport", "PoolStats", "parse_head"]
