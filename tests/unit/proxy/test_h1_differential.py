"""The upstream client's reading of answers against the parser it replaced and aiohttp's.

Each answer (generated, or picked by hand for being nasty) is read three ways:

- `ours`: the client's own connection (llhttp under `_Connection`), fed the bytes in the
  pieces drawn (so every llhttp callback is also seen split across reads), then the
  server's close, and read by the client's own readers (`_head_so_far`, `_read_body`,
  `H1Stream`) exactly as an attempt reads it;
- `legacy`: the hand-written parser the client used before (`legacy_h1_parser`);
- `aiohttp`: aiohttp's pure-Python response parser (`aiohttp.http_parser`), an
  implementation independent of llhttp, set up as aiohttp's client sets it up.

`ours` and `legacy` must agree on refusing or accepting and, when both accept, on the
status, the header fields, the body and whether the connection may serve another request;
`intended_difference` names every case where they may not. aiohttp must agree with `ours`
whenever both accept; aiohttp reads answers leniently (bare LF line ends, folded fields,
a length beside chunked, and more), so where only aiohttp accepts, `aiohttp_leniency` must
name why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParserPy
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import AttemptFailed
from gateway.proxy import h1
from gateway.proxy.transport import BUFFER_LIMIT, PoolSpec
from tests.unit.proxy import legacy_h1_parser as legacy_parser

Fields = tuple[tuple[bytes, bytes], ...]


@dataclasses.dataclass(frozen=True)
class Reading:
    accepted: bool
    status: int = 0
    headers: Fields = ()
    body: bytes = b""
    reusable: bool = False
    why: str = dataclasses.field(default="", compare=False)


def _fields(pairs: list[tuple[bytes, bytes]]) -> Fields:
    return tuple((name.lower(), value.strip(b" \t")) for name, value in pairs)


def _encoded(headers: object) -> Fields:
    items = headers.items()  # type: ignore[attr-defined]
    return _fields(
        [
            (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
            for k, v in items
        ]
    )


# --- the three readers ----------------------------------------------------------------------


def legacy(data: bytes, method: str) -> Reading:
    try:
        answer = legacy_parser.read_answer(data, method)
    except legacy_parser.Refused as e:
        return Reading(False, why=str(e))
    head = answer.head
    return Reading(True, head.status, _encoded(head.headers), answer.body, answer.reusable)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


async def _ours(data: bytes, method: str, pieces: list[int]) -> Reading:
    conn = h1._Connection()
    conn.begin(method)
    start = 0
    for end in [*pieces, len(data)]:
        if end > start:
            conn.data_received(data[start:end])
            start = end
    if not conn.complete:
        conn.eof_received()  # the server's close: the end of everything it sent
    pool = h1.H1Transport("http://127.0.0.1:9", PoolSpec(1, 1.0, 30.0), check_json=False)._pool
    try:
        head = h1._head_so_far(conn)
        assert head is not None  # every byte and the server's close were fed: it is decided
        if head.framing == h1._NONE:
            body = b""
        elif head.framing == h1._LENGTH and head.length <= BUFFER_LIMIT:
            body = await h1._read_body(conn, head.length)
        else:
            stream = h1.H1Stream(conn, pool, head)
            parts = []
            while part := await stream.read_chunk():
                parts.append(part)
            body = b"".join(parts)
    except h1._FirstByteLost:
        return Reading(False, why="closed without answering")
    except AttemptFailed as e:
        return Reading(False, why=f"{e.outcome.value}: {e.message}")
    # what `_send` and `_Pool.release` ask before keeping a connection
    reusable = head.keep_alive and conn.complete and not conn.extra
    return Reading(True, head.status, _encoded(head.headers), body, reusable)


def ours(runner: asyncio.Runner, data: bytes, method: str, pieces: list[int]) -> Reading:
    return runner.run(_ours(data, method, pieces))


def aiohttp_reading(runner: asyncio.Runner, data: bytes, method: str) -> Reading:
    """aiohttp's client reading: limits raised to the client's head limit."""
    loop = runner.get_loop()
    parser = HttpResponseParserPy(
        BaseProtocol(loop),
        loop,
        2**16,
        max_line_size=h1.HEAD_LIMIT,
        max_field_size=h1.HEAD_LIMIT,
        response_with_body=method != "HEAD",
        read_until_eof=True,
        auto_decompress=False,
    )
    messages = []
    try:
        got, _, _ = parser.feed_data(data)
        messages += got
        parser.feed_eof()
    except Exception as e:  # aiohttp raises several kinds; any is a refusal here
        if not any(m.code >= 200 for m, _ in messages):
            return Reading(False, why=repr(e))
    for message, payload in messages:
        if message.code < 200:
            continue
        try:
            body = runner.run(payload.read())
        except Exception as e:
            return Reading(False, why=repr(e))
        return Reading(True, message.code, _fields(list(message.raw_headers)), body)
    return Reading(False, why="no final answer")


# --- what may differ, and why ----------------------------------------------------------------


def _final_head(data: bytes) -> bytes:
    """The head of the first final answer (past interim ones), as far as it goes."""
    start = 0
    while re.match(rb"HTTP/1\.[01] 1\d\d ", data[start:]):
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            break
        start = end + 4
    end = data.find(b"\r\n\r\n", start)
    return data[start : end if end >= 0 else len(data)]


def _values(head: bytes, name: bytes) -> list[bytes]:
    return [
        line.split(b":", 1)[1].strip(b" \t")
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(name + b":")
    ]


def intended_difference(data: bytes, method: str, new: Reading, old: Reading) -> str | None:
    """Why the client may now read `data` differently from the parser it replaced."""
    head = _final_head(data)
    lengths = _values(head, b"content-length")
    status = re.match(rb"HTTP/1\.[01] (\d\d\d)", head)
    no_body = method == "HEAD" or (status is not None and status[1] in (b"204", b"304"))
    if old.accepted and not new.accepted:
        if len(lengths) > 1 or any(b"," in v for v in lengths):
            return (
                "a repeated Content-Length (or a list of them) is refused even when the "
                "values agree: RFC 9110 8.6 lets a recipient refuse it, and llhttp does"
            )
        if re.search(rb"\r\n[0-9A-Fa-f]+[ \t]+;", data[len(head) :]):
            return (
                "whitespace before a chunk extension (BWS in RFC 9112 7.1.1) is refused by "
                "llhttp in strict mode; its leniency for it would also take a size followed "
                "by spaces alone, which the old parser refused"
            )
        if (no_body or _values(head, b"transfer-encoding")) and lengths:
            return (
                "a Content-Length the framing does not use (beside chunked, or in an answer "
                "to HEAD, a 204, a 304) is still checked by llhttp; the old parser ignored it"
            )
        return None
    if new.accepted and not old.accepted:
        return None
    if new.accepted and old.accepted and new.reusable != old.reusable:
        return None
    return None


def aiohttp_leniency(data: bytes, method: str, new: Reading, aio: Reading) -> str | None:
    """Why aiohttp may accept what the client refuses."""
    head = _final_head(data)
    lines = head.split(b"\r\n")
    if b"\n" in data.replace(b"\r\n", b"") or b"\r" in data.replace(b"\r\n", b""):
        return "aiohttp reads bare LF (and strips bare CR) in an answer's framing"
    if any(line[:1] in (b" ", b"\t") for line in lines[1:]):
        return "aiohttp unfolds obs-fold in answers; RFC 9112 5.2 lets a client refuse it"
    if _values(head, b"transfer-encoding") and _values(head, b"content-length"):
        return "aiohttp lets chunked win over a Content-Length beside it"
    if len(_values(head, b"content-length")) > 1:
        return "aiohttp reads the first of several Content-Length fields, however they differ"
    if intended_difference(data, method, new, legacy(data, method)) is not None:
        return "the old parser accepted it too (see intended_difference)"
    if re.fullmatch(rb"[\t\x20-\x7e\x80-\xff]*", lines[0]) is None:
        return "aiohttp takes control characters in the reason phrase"
    if not re.match(rb"HTTP/1\.[01] [1-9]\d\d( |$)", lines[0]):
        return "aiohttp takes other HTTP versions and status codes (HTTP/2.0, 099...)"
    if any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line.split(b":", 1)[-1]) for line in lines[1:]):
        return "aiohttp takes control characters in field values"
    if any(
        re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", line.split(b":", 1)[0]) is None
        for line in lines[1:]
    ):
        return "aiohttp takes field names that are not tokens"
    codings = b",".join(_values(head, b"transfer-encoding")).replace(b" ", b"").lower()
    if codings and codings != b"chunked":
        return "aiohttp reads other transfer codings to the close; the client refuses them"
    if b"\r\n0\r\n" in data and re.search(rb"\r\n0\r\n(?:[^\r\n]*\r\n)*[^\r\n:]*\r\n", data):
        return "aiohttp does not check trailer fields"
    return None


def compare(
    runner: asyncio.Runner, data: bytes, method: str = "GET", pieces: list[int] | None = None
) -> None:
    new = ours(runner, data, method, pieces or [])
    old = legacy(data, method)
    if new != old:
        reason = intended_difference(data, method, new, old)
        assert reason is not None, (
            f"client and old parser differ on {data!r}:\n  new: {new}\n  old: {old}"
        )
    aio = aiohttp_reading(runner, data, method)
    if new.accepted and aio.accepted:
        assert (new.status, new.headers, new.body) == (aio.status, aio.headers, aio.body), (
            f"client and aiohttp read {data!r} differently:\n  new: {new}\n  aiohttp: {aio}"
        )
    elif aio.accepted:
        assert aiohttp_leniency(data, method, new, aio) is not None, (
            f"aiohttp accepts {data!r}, the client refuses it:\n  new: {new}\n  aiohttp: {aio}"
        )


# --- hand-picked answers -------------------------------------------------------------------

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
BIG = b"x" * (h1.HEAD_LIMIT + 10)
NASTY = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="plain"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\tfolded\r\nContent-Length: 0\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", id="duplicate-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", id="content-length-list"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk", id="conflicting-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", id="signed-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nok", id="content-length-overflow"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="cl-and-te"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="te-and-cl"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="te-gzip-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", id="te-chunked-twice"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok", id="te-identity"),
    pytest.param(CHUNKED + b"zz\r\nok\r\n0\r\n\r\n", id="chunk-size-not-hex"),
    pytest.param(CHUNKED + b"0x2\r\nok\r\n0\r\n\r\n", id="chunk-size-0x"),
    pytest.param(CHUNKED + b"-2\r\nok\r\n0\r\n\r\n", id="chunk-size-negative"),
    pytest.param(CHUNKED + b"10000000000000002\r\nok\r\n0\r\n\r\n", id="chunk-size-overflow"),
    pytest.param(CHUNKED + b"3\r\nok\r\n0\r\n\r\n", id="chunk-size-too-big"),
    pytest.param(CHUNKED + b"1\r\nok\r\n0\r\n\r\n", id="chunk-size-too-small"),
    pytest.param(CHUNKED + b"2 \r\nok\r\n0\r\n\r\n", id="chunk-size-trailing-space"),
    pytest.param(CHUNKED + b"2 ;e=1\r\nok\r\n0\r\n\r\n", id="chunk-size-bws-extension"),
    pytest.param(CHUNKED + b"2;e=1;f=\"q\"\r\nok\r\n0\r\n\r\n", id="chunk-extensions"),
    pytest.param(CHUNKED + b"2\r\nok\r\n0\r\nX-T: 1\r\n\r\n", id="trailer"),
    pytest.param(CHUNKED + b"2\r\nok\r\n0\r\nbad trailer\r\n\r\n", id="malformed-trailer"),
    pytest.param(CHUNKED + b"2\r\nok\n0\r\n\r\n", id="chunk-data-bare-lf"),
    pytest.param(CHUNKED + b"2\r\nok\r\n", id="no-last-chunk"),
    pytest.param(CHUNKED + b"2\r\nok\r\n0\r\n", id="no-end-of-trailers"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="lf-only"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: 1\nContent-Length: 0\r\n\r\n", id="one-bare-lf"),
    pytest.param(b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", id="bare-cr-in-reason"),
    pytest.param(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", id="nul-in-reason"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", id="nul-in-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n", id="space-before-colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: \x80\xff\r\nContent-Length: 0\r\n\r\n", id="obs-text"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX:  v \t\r\nContent-Length: 0\r\n\r\n", id="whitespace-around-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + BIG + b"\r\nContent-Length: 0\r\n\r\n", id="huge-header"),
    pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-A: 12345678\r\n" * 5000 + b"Content-Length: 0\r\n\r\n", id="huge-header-block"),
    pytest.param(CHUNKED + b"2\r\nok\r\n0\r\nX-T: " + BIG + b"\r\n\r\n", id="huge-trailer"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + BIG, id="huge-unfinished-header"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", id="truncated-length-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra", id="bytes-after-the-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", id="a-second-answer"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\nuntil the close", id="until-close"),
    pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", id="connection-close"),
    pytest.param(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok", id="connection-close-in-a-list"),
    pytest.param(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", id="http-1.0-keep-alive"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\nuntil the close", id="http-1.0-until-close"),
    pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="http-2.0"),
    pytest.param(b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n", id="http-1.2"),
    pytest.param(b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n", id="status-099"),
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", id="status-four-digits"),
    pytest.param(b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n", id="no-space-after-status"),
    pytest.param(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", id="no-reason"),
    pytest.param(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", id="101"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="interim"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="two-interims"),
    pytest.param(b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="interim-in-http-1.0"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="interim-only"),
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", id="204-with-a-length"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", id="304-chunked"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: \xc2\xb2\r\n\r\n", id="304-bad-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="closed-inside-the-head"),
    pytest.param(b"", id="nothing"),
    pytest.param(b"garbage\r\n\r\n", id="garbage"),
]  # fmt: skip


@pytest.mark.parametrize("data", NASTY)
def test_nasty_answers_read_alike_or_as_documented(runner: asyncio.Runner, data: bytes) -> None:
    compare(runner, data)


# byte by byte is for the small ones; the large ones are read whole above
SMALL = [p for p in NASTY if len(p.values[0]) <= 4096]  # type: ignore[arg-type]


@pytest.mark.parametrize("data", SMALL)
def test_nasty_answers_fed_byte_by_byte(runner: asyncio.Runner, data: bytes) -> None:
    compare(runner, data, pieces=list(range(1, len(data))))


HEAD_ANSWERS = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", id="length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", id="chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", id="no-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", id="no-length-close"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", id="with-a-body"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", id="duplicate-length"
    ),
]


@pytest.mark.parametrize("data", HEAD_ANSWERS)
def test_answers_to_head_have_no_body(runner: asyncio.Runner, data: bytes) -> None:
    compare(runner, data, "HEAD")


# --- generated answers ---------------------------------------------------------------------

VERSION = st.sampled_from(
    [b"HTTP/1.1"] * 24 + [b"HTTP/1.0"] * 4 + [b"HTTP/2.0", b"HTTP/1.2", b"http/1.1"]
)
STATUS = st.sampled_from(
    [b"200"] * 20 + [b"201", b"204", b"304", b"404", b"500", b"503", b"099", b"600", b"20", b"2x0"]
)
REASON = st.sampled_from([b" OK"] * 15 + [b"", b" ", b" Not Found", b" \xff", b" a\x00b", b" a\tb"])
INTERIM = st.sampled_from(
    [b""] * 6 + [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early\r\nLink: x\r\n\r\n"]
)
NAME = st.sampled_from(
    [b"X-A"] * 4
    + [
        b"Content-Type",
        b"Connection",
        b"Content-Length",
        b"Transfer-Encoding",
        b"X A",
        b"",
        b"X\xffA",
    ]
)
VALUE = st.one_of(
    st.sampled_from(
        [b"v", b"", b" v", b"v ", b"\x80\xff", b"a\x7fb", b"close", b"keep-alive", b"chunked", b"2"]
    ),
    st.binary(max_size=6),
)
BODY = st.one_of(st.binary(max_size=40), st.just(b'{"a": 1}'))
CHUNK_SIZE = st.sampled_from(
    [lambda n: b"%x" % n] * 6
    + [lambda n: b"%X" % n, lambda n: b"00%x" % n, lambda n: b"%x;e=1" % n, lambda n: b"%x " % n,
       lambda n: b"%x" % (n + 1), lambda n: b"-%x" % n]
)  # fmt: skip
# all CRLF, or one line (by index; past the last field: the empty line) ending otherwise
LINE_ENDS = st.sampled_from(
    [None] * 30 + [(i, end) for i in range(5) for end in (b"\n", b"\r", b"\r\r\n")]
)
CHUNK_END = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"", b"xx"])


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    cut = draw(st.integers(0, len(body)))
    out = b""
    for part in (body[:cut], body[cut:]):
        if part:
            out += draw(CHUNK_SIZE)(len(part)) + b"\r\n" + part + draw(CHUNK_END)
    trailer = draw(st.sampled_from([b""] * 4 + [b"X-T: t\r\n", b"bad\r\n"]))
    return (
        out
        + draw(st.sampled_from([b"0\r\n"] * 6 + [b""]))
        + trailer
        + draw(st.sampled_from([b"\r\n"] * 6 + [b""]))
    )


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    body = draw(BODY)
    fields = [(b"Content-Type", b"application/json")]
    for _ in range(draw(st.integers(0, 3))):
        fields.append((draw(NAME), draw(VALUE)))
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked", "close"]))
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % len(body)))
        body += draw(st.sampled_from([b""] * 5 + [b"extra"]))
        if draw(st.booleans()) and len(body) > 2:
            body = body[: len(body) // 2]
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked_body(body))
    fields = draw(st.permutations(fields))
    lines = [
        draw(VERSION) + b" " + draw(STATUS) + draw(REASON),
        *(n + b": " + v for n, v in fields),
    ]
    odd = draw(LINE_ENDS)
    ends = [b"\r\n"] * (len(lines) + 1)
    if odd is not None:
        ends[min(odd[0], len(lines))] = odd[1]
    head = b"".join(line + end for line, end in zip([*lines, b""], ends, strict=True))
    return draw(INTERIM) + head + body


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(
    data=answers(),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    method=st.sampled_from(["GET"] * 9 + ["HEAD"]),
)
def test_generated_answers_read_alike_or_as_documented(
    runner: asyncio.Runner, data: bytes, cuts: list[int], method: str
) -> None:
    compare(runner, data, method, sorted(c for c in cuts if c < len(data)))
