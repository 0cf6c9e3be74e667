"""The upstream HTTP/1.1 client against llhttp, on generated responses.

`parse_head` (status line and header block) and the whole exchange through `H1Transport`
(the head, then the body as `H1Stream` or the buffered read frames it) read each generated
response; llhttp (`httptools.HttpResponseParser`, strict) reads the same bytes. They must
agree on accepting or refusing it and, when both accept, on the status, the header fields
and the body. Where they may differ, `intended_difference` says why, case by case; any
other difference fails the test.

How llhttp's reading is taken:
- header values lose their trailing whitespace (RFC 9110 5.5: it is not part of the value;
  llhttp leaves it to the caller, the client strips it);
- interim (1xx) answers are skipped, as the client skips them;
- only the first final answer counts: bytes after it are not part of it;
- a response delimited by the end of the connection is complete at the server's close
  (llhttp needs to be told of the end; `httptools` cannot, so `_llhttp_needs_eof` asks
  llhttp itself whether this head is delimited that way).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import AttemptFailed
from gateway.proxy.h1 import H1Transport, parse_head
from gateway.proxy.transport import PoolSpec
from tests.adversarial.edge import join_lines

# --- verdicts -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    accepted: bool
    status: int = 0
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None  # None: not compared (a head-only reading)
    keep_alive: bool = False
    why: str = ""


def _norm_headers(pairs: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.lower(), value.strip(b" \t")) for name, value in pairs)


class _Responses:
    """llhttp callbacks keeping the first final (non-1xx) response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.status = 0
        self.in_head = False
        self.head_done = False  # the final response's head is complete
        self.done = False  # the final response is complete
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.done:
            return
        self.headers = []
        self.body = bytearray()
        self.in_head = True
        self.head_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head and not self.done:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        self.in_head = False
        self.status = self.parser.get_status_code()
        if self.status >= 200 or self.status == 101:
            self.head_done = True
            self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.head_done and not self.done:
            self.body += body

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True


def _llhttp_needs_eof(head: bytes) -> bool:
    """Whether llhttp delimits the body of this (accepted) head by the end of the connection.

    llhttp says so through keep-alive: an HTTP/1.1 message without `Connection: close` is
    kept alive exactly when its end is known without the close. So the same head, as
    HTTP/1.1 and without its Connection fields (which change nothing in the framing), is
    asked.
    """
    lines = head.split(b"\r\n")
    status_line = b"HTTP/1.1" + lines[0][8:]
    fields = [ln for ln in lines[1:] if not ln.lower().startswith(b"connection:")]
    probe = _Responses()
    try:
        probe.parser.feed_data(b"\r\n".join([status_line, *fields]))
    except httptools.HttpParserError:
        return False
    return probe.head_done and not probe.done and not probe.keep_alive


def llhttp_response(data: bytes, *, head_only: bool = False) -> Verdict:
    r = _Responses()
    try:
        r.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Verdict(True, 101, _norm_headers(r.headers), None, False, "upgrade")
    except httptools.HttpParserError as e:
        if not r.done and not (head_only and r.head_done):
            return Verdict(False, why=f"{type(e).__name__}: {e}")
    if not r.head_done:
        return Verdict(False, why="incomplete head")
    headers = _norm_headers(r.headers)
    if head_only:
        return Verdict(True, r.status, headers, None, r.keep_alive)
    if not r.done:
        end = data.find(b"\r\n\r\n", _final_head_start(data))
        if not _llhttp_needs_eof(data[: end + 4]):
            return Verdict(False, why="body cut short by the close")
    return Verdict(True, r.status, headers, bytes(r.body), r.keep_alive)


def _final_head_start(data: bytes) -> int:
    """Where the first final (non-1xx) head starts, past interim answers."""
    start = 0
    while re.match(rb"HTTP/1\.[01] 1\d\d", data[start:]) and not data[start:].startswith(
        b"HTTP/1.1 101"
    ):
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return start
        start = end + 4
    return start


def ours_head(data: bytes) -> Verdict:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return Verdict(False, why="no end of head")
    try:
        head = parse_head(data[: end + 2], "GET")
    except AttemptFailed as e:
        return Verdict(False, why=e.message)
    pairs = [
        (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for k, v in head.headers.items()
    ]
    return Verdict(True, head.status, _norm_headers(pairs), None, head.keep_alive)


# --- what may differ, and why ---------------------------------------------------------------------


def _field(headers: tuple[tuple[bytes, bytes], ...], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def _codings(headers: tuple[tuple[bytes, bytes], ...]) -> list[bytes]:
    return [
        c.strip(b" \t").lower()
        for joined in _field(headers, b"transfer-encoding")
        for c in joined.split(b",")
        if c.strip(b" \t")
    ]


def _llhttp_accepts_unframed(data: bytes) -> bool:
    """Whether llhttp accepts the final head once its framing fields are gone."""
    start = _final_head_start(data)
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return False
    lines = data[start:end].split(b"\r\n")
    kept = [
        ln for ln in lines if not ln.lower().startswith((b"content-length:", b"transfer-encoding:"))
    ]
    return llhttp_response(b"\r\n".join(kept) + b"\r\n\r\n", head_only=True).accepted


def intended_difference(data: bytes, ours: Verdict, theirs: Verdict) -> str | None:
    """Why the client may read `data` differently from llhttp, or None when it may not."""
    status_line = data[_final_head_start(data) :].split(b"\r\n", 1)[0]
    if theirs.accepted and not ours.accepted:
        # the client is stricter
        if not re.match(rb"HTTP/1\.[01] ", status_line):
            return "only HTTP/1.0 and HTTP/1.1 answers are read on an HTTP/1.1 connection"
        if theirs.status < 100:
            return "a status code below 100 is not a status code (RFC 9110 15)"
        if theirs.status == 101:
            return "the client never asks to switch protocols, so a 101 is refused"
        if re.fullmatch(rb"[\t\x20-\x7e\x80-\xff]*", status_line[13:]) is None:
            return (
                "a reason phrase is HTAB, SP, VCHAR and obs-text (RFC 9112 4): llhttp lets "
                "control characters through, the client may refuse them"
            )
        if _field(theirs.headers, b"transfer-encoding") and _codings(theirs.headers) != [
            b"chunked"
        ]:
            return (
                "only `chunked` is undone: Transfer-Encoding is not forwarded, so any other "
                "transfer coding would reach the client as a body it cannot decode"
            )
        return None
    if ours.accepted and not theirs.accepted:
        # the client is more lenient: only where RFC 9112 lets a recipient be
        lengths = [
            v.strip(b" \t")
            for joined in _field(ours.headers, b"content-length")
            for v in joined.split(b",")
        ]
        if _codings(ours.headers) == [b"chunked"] and lengths:
            return (
                "Content-Length beside chunked: chunked wins and the connection is not reused "
                "(RFC 9112 6.3, rule 3)"
            )
        if len(lengths) > 1 and len(set(lengths)) == 1:
            return "repeated identical Content-Length values may be read as one (RFC 9110 8.6)"
        if _codings(ours.headers) == [b"chunked"] and re.search(rb"\r\n[0-9A-Fa-f]+[ \t]+;", data):
            return "whitespace before a chunk extension is BWS (RFC 9112 7.1.1)"
        if (ours.status < 200 or ours.status in (204, 304)) and _llhttp_accepts_unframed(data):
            return (
                "an answer that never has a body (1xx, 204, 304) is read without its framing "
                "fields, and those are not forwarded"
            )
        return None
    if ours.accepted and theirs.accepted and theirs.keep_alive and not ours.keep_alive:
        return "the client may close where llhttp would reuse (an HTTP/1.0 answer, say)"
    return None


def compare(data: bytes, ours: Verdict, theirs: Verdict) -> None:
    if theirs.why == "upgrade":
        # a connection switching protocols is never reused: keep-alive says nothing
        ours = dataclasses.replace(ours, keep_alive=False)
    if ours.accepted == theirs.accepted and (
        not ours.accepted
        or (
            ours.status == theirs.status
            and ours.headers == theirs.headers
            and ours.body == theirs.body
            and ours.keep_alive == theirs.keep_alive
        )
    ):
        return
    reason = intended_difference(data, ours, theirs)
    assert reason is not None, (
        f"the client and llhttp read {data!r} differently:\n  client: {ours}\n  llhttp: {theirs}"
    )
    if ours.accepted and theirs.accepted:
        # only keep-alive may differ, and only towards closing
        assert (ours.status, ours.headers, ours.body) == (
            theirs.status,
            theirs.headers,
            theirs.body,
        )


# --- generated responses ------------------------------------------------------------------------

VERSION = st.sampled_from(
    [b"HTTP/1.1"] * 10
    + [b"HTTP/1.0"] * 2
    + [b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.10", b"HTTP/1"]
)
STATUS = st.sampled_from(
    [b"200"] * 8
    + [b"201", b"204", b"304", b"404", b"500", b"503", b"099", b"000", b"600", b"999", b"20"]
    + [b"2000", b"2x0", b"101"]
)
REASON = st.sampled_from(
    [b" OK"] * 6
    + [b"", b" ", b" Not Found", b" \xff", b" a\x00b", b" a\tb", b"  OK", b"OK", b" a\rb"]
)
INTERIM = st.sampled_from(
    [b""] * 8
    + [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]
)
# Line ends: all CRLF, or one line (by index; past the last field: the empty line) ending
# otherwise. One draw, not one per line: drawing is what a generated example costs most.
LINE_ENDS = st.sampled_from(
    [None] * 24 + [(i, end) for i in range(6) for end in (b"\n", b"\r", b"\r\r\n")]
)
NAME = st.sampled_from(
    [
        b"X-A",
        b"Content-Type",
        b"Connection",
        b"Content-Length",
        b"Transfer-Encoding",
        b"X A",
        b"",
        b"X\xffA",
        b"X:A",
    ]
)
VALUES = {
    b"Content-Length": st.sampled_from(
        [
            lambda n: b"%d" % n,
            lambda n: b"%d, %d" % (n, n),
            lambda n: b"%d" % (n + 3),
            lambda n: b"+1",
            lambda n: b"\xc2\xb2",
        ]
    ),
    b"Transfer-Encoding": st.sampled_from(
        [b"chunked", b"gzip, chunked", b"chunked, gzip", b"gzip", b"identity", b"chunked, chunked"]
    ).map(lambda v: lambda n: v),
}
OTHER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"v",
            b"",
            b" v",
            b"v ",
            b"\tv\t",
            b"\x80\xff",
            b"a\x7fb",
            b"a\x00b",
            b"a\r\n b",
            b"close",
            b"keep-alive",
        ]
    ),
    st.binary(max_size=8),
).map(lambda v: lambda n: v)
BODY = st.one_of(st.binary(max_size=24), st.just(b'{"a": 1}'))
FRAMING = st.sampled_from(["length", "length", "chunked", "chunked", "close"])
EXTRA = st.sampled_from([b""] * 6 + [b"extra"])
CHUNK_SIZE = st.sampled_from(
    [lambda n: b"%x" % n] * 6
    + [
        lambda n: b"%X" % n,
        lambda n: b"00%x" % n,
        lambda n: b"%x " % n,
        lambda n: b" %x" % n,
        lambda n: b"%x \t;e" % n,
        lambda n: b"%x" % (n + 1),
        lambda n: b"%x" % max(n - 1, 0),
        lambda n: b"1%015x" % n,
        lambda n: b"-%x" % n,
    ]
)
CHUNK_EXTENSION = st.sampled_from([b""] * 6 + [b";a=b", b";a", b';a="q"'])
CHUNK_END = st.sampled_from([b"\r\n"] * 8 + [b"", b"\n", b"xx"])
LAST_CHUNK = st.sampled_from([b"0\r\n"] * 8 + [b"", b"0;e\r\n", b"000\r\n"])
TRAILER = st.sampled_from([b""] * 6 + [b"X-T: t\r\n", b"bad trailer\r\n"])
LAST_END = st.sampled_from([b"\r\n"] * 8 + [b""])


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    cut = draw(st.integers(0, len(body)))
    out = b""
    for part in (body[:cut], body[cut:]):
        if part:
            size = draw(CHUNK_SIZE)(len(part))
            out += size + draw(CHUNK_EXTENSION) + b"\r\n" + part + draw(CHUNK_END)
    return out + draw(LAST_CHUNK) + draw(TRAILER) + draw(LAST_END)


@st.composite
def responses(draw: st.DrawFn, interim: bool = True) -> bytes:
    line = draw(VERSION) + b" " + draw(STATUS) + draw(REASON)
    body = draw(BODY)
    framing = draw(FRAMING)
    fields: list[tuple[bytes, bytes]] = [(b"Content-Type", b"application/json")]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(NAME)
        fields.append((name, draw(VALUES.get(name, OTHER_VALUES))(len(body))))
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % len(body)))
        body += draw(EXTRA)
        if draw(st.booleans()) and len(body) > 2:
            body = body[: len(body) // 2]  # cut short
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked(body))
    fields = draw(st.permutations(fields))
    head = join_lines([line, *(n + b": " + v for n, v in fields)], draw(LINE_ENDS))
    prefix = draw(INTERIM) if interim else b""
    return prefix + head + body


# --- the head -------------------------------------------------------------------------------------

EXAMPLES = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="plain"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX:  v \t\r\nContent-Length: 0\r\n\r\n", id="whitespace-around-a-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: \x80\xff\r\nContent-Length: 0\r\n\r\n", id="obs-text"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 0\r\n\r\n", id="del-in-a-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n", id="space-before-colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", id="content-length-conflict"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", id="content-length-repeated"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\nok", id="content-length-superscript"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="length-and-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="gzip-then-chunked"),
    pytest.param(b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n", id="status-below-100"),
    pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="http-2.0"),
    pytest.param(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", id="http-1.0-keep-alive"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
    pytest.param(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", id="nul-in-the-reason"),
    pytest.param(b"HTTP/1.1 200 OK\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n", id="bare-lf-after-the-status-line"),
    pytest.param(b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", id="bare-cr-in-the-reason"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: \xc2\xb2\r\n\r\n", id="304-with-a-bad-length"),
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", id="204-with-conflicting-lengths"),
]  # fmt: skip


@pytest.mark.parametrize("data", EXAMPLES)
def test_parse_head_examples_agree_with_llhttp(data: bytes) -> None:
    compare(data, ours_head(data), llhttp_response(data, head_only=True))


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(data=responses(interim=False))
def test_parse_head_agrees_with_llhttp(data: bytes) -> None:
    compare(data, ours_head(data), llhttp_response(data, head_only=True))


# --- the whole exchange: H1Transport against a raw-socket server ------------------------------------


class FakeUpstream:
    """Answers every request with `response`, byte for byte, then closes the connection."""

    def __init__(self) -> None:
        self.response = b""
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.response)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def ours_exchange(upstream: FakeUpstream, data: bytes) -> Verdict:
    upstream.response = data
    transport = H1Transport(
        f"http://127.0.0.1:{upstream.port}", PoolSpec(1, 1.0, 30.0), check_json=False
    )
    try:
        async with asyncio.timeout(5):
            try:
                resp = await transport.send("GET", "/x", {}, b"")
                if resp.stream is None:
                    assert resp.body is not None
                    body = resp.body
                else:
                    parts = []
                    while chunk := await resp.stream.read_chunk(2.0):
                        parts.append(chunk)
                    resp.release()
                    body = b"".join(parts)
            except AttemptFailed as e:
                return Verdict(False, why=f"{e.outcome}: {e.message}")
    finally:
        await transport.close()
    pairs = [
        (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for k, v in resp.headers.items()
    ]
    return Verdict(True, resp.status, _norm_headers(pairs), body, False)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[asyncio.Runner, FakeUpstream]]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        up = FakeUpstream()
        runner.run(up.start())
        yield runner, up
        runner.run(up.stop())


def _exchange_compare(upstream: tuple[asyncio.Runner, FakeUpstream], data: bytes) -> None:
    runner, up = upstream
    ours = runner.run(ours_exchange(up, data))
    theirs = dataclasses.replace(llhttp_response(data), keep_alive=False)
    compare(data, ours, theirs)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
EXCHANGES = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", id="length-cut-short"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra", id="length-then-extra"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\nuntil close", id="until-close"),
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", id="204-with-a-length"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="interim"),
    pytest.param(CHUNKED + b"2\r\nok\r\n3;e=1\r\n!!!\r\n0\r\nX-T: t\r\n\r\n", id="chunked-extension-trailer"),
    pytest.param(CHUNKED + b"2\r\nok\r\n", id="chunked-without-last-chunk"),
    pytest.param(CHUNKED + b"2\r\nokxx0\r\n\r\n", id="chunk-longer-than-its-size"),
    pytest.param(CHUNKED + b"2 \r\nok\r\n0\r\n\r\n", id="chunk-size-trailing-space"),
    pytest.param(CHUNKED + b" 2\r\nok\r\n0\r\n\r\n", id="chunk-size-leading-space"),
    pytest.param(CHUNKED + b"2 ;e\r\nok\r\n0\r\n\r\n", id="chunk-size-bws-before-extension"),
    pytest.param(CHUNKED + b"10000000000000002\r\nok\r\n0\r\n\r\n", id="chunk-size-overflow"),
    pytest.param(CHUNKED + b"2\r\nok\r\n0\r\nbad trailer\r\n\r\n", id="malformed-trailer"),
    pytest.param(CHUNKED + b"2\r\nok\n0\r\n\r\n", id="chunk-data-bare-lf"),
]  # fmt: skip


@pytest.mark.parametrize("data", EXCHANGES)
def test_exchange_examples_agree_with_llhttp(
    upstream: tuple[asyncio.Runner, FakeUpstream], data: bytes
) -> None:
    _exchange_compare(upstream, data)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=responses())
def test_h1_transport_agrees_with_llhttp(
    upstream: tuple[asyncio.Runner, FakeUpstream], data: bytes
) -> None:
    _exchange_compare(upstream, data)
