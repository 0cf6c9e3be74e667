"""Generated request bytes at the edge, judged against llhttp's reading of the same bytes.

Each example is one request built from a method, a target, a version, header fields and a
body framing, any of them mutated (bad lengths, odd transfer codings, dot segments and
encoded separators, stray bytes, bare line ends, a request hidden in the body), followed on
the same connection by a plain probe request. Every request carries `X-Mark` fields, which
the echo backend returns, so each answer says which request it belongs to.

llhttp (strict, as `httptools` ships it) reads the same bytes and says where each request
starts and ends. The gateway may refuse more than llhttp does, but it must never frame the
bytes differently. For every example:

- the gateway answers with well-formed HTTP, never a 5xx (501 and 505, "not implemented"
  and "version not supported", are a refusal, not a failure), or closes the connection;
- it hangs only where llhttp says the bytes end inside a message (a promised body);
- answer k belongs to the k-th request llhttp read: a forwarded request carries exactly the
  marks of that request (never a request hidden in a body, never a field of another one);
- what a backend received is what matched (`forwarding_problems`);
- the gateway still serves a plain request afterwards.
"""

from __future__ import annotations

import dataclasses

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.edge import (
    ANSWER_WAIT,
    Conversation,
    Edge,
    converse,
    forwarding_problems,
    join_lines,
)

PROBE = b"GET /v2/models/public/probe HTTP/1.1\r\nHost: edge.test\r\nX-Mark: m2\r\n\r\n"
SMUGGLED = b"GET /v2/models/private/smuggled HTTP/1.1\r\nHost: edge.test\r\nX-Mark: hidden\r\n\r\n"
# Statuses that refuse what the client asked for rather than report a failure.
REFUSALS_5XX = frozenset({501, 505})
# How long to wait where llhttp says the gateway must wait for more bytes.
INCOMPLETE_WAIT = 0.2


# --- llhttp's reading -------------------------------------------------------------------------


@dataclasses.dataclass
class Reading:
    """The requests llhttp reads from the bytes, as the `X-Mark` values of each, in order.

    `incomplete`: the bytes end inside a message. `ambiguous`: llhttp stopped at an upgrade
    or a CONNECT whose body, if any, it does not read; what follows is not its business.
    """

    marks: list[list[bytes]]
    incomplete: bool = False
    ambiguous: bool = False
    error: str | None = None


class _Requests:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[list[bytes]] = []
        self.framed = False  # the message in progress declares a body
        self._marks: list[bytes] = []
        self._in_head = False
        self.in_message = False

    def on_message_begin(self) -> None:
        self._marks = []
        self._in_head = self.in_message = True
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field
        lowered = name.lower()
        if lowered == b"x-mark":
            self._marks.append(value)
        elif lowered == b"transfer-encoding" or (
            lowered == b"content-length" and value.strip() not in (b"", b"0")
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_message_complete(self) -> None:
        self.done.append(self._marks)
        self.in_message = False


def llhttp_reading(data: bytes) -> Reading:
    marks: list[list[bytes]] = []
    while True:
        r = _Requests()
        try:
            r.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            marks += r.done
            if r.framed:
                # llhttp upgrades before the body; a server declining the upgrade reads it
                return Reading(marks, ambiguous=True)
            # a declined upgrade: the connection goes on as HTTP/1.1 after the head
            data = data[e.args[0] :]
            continue
        except httptools.HttpParserError as e:
            return Reading(marks + r.done, error=f"{type(e).__name__}: {e}")
        return Reading(marks + r.done, incomplete=r.in_message)


# --- generated requests --------------------------------------------------------------------------

METHODS = (
    [b"GET"] * 4
    + [b"POST"] * 4
    + [
        b"PUT",
        b"DELETE",
        b"PATCH",
        b"OPTIONS",
        b"TRACE",
        b"CONNECT",
        b"get",
        b"G ET",
        b"FOO",
        b"M-SEARCH",
        b"",
    ]
)
PREFIXES = [b"/v2/models/public/", b"/v2/models/private/", b"/v1/", b"/", b"/plain/"] * 3 + [
    b"http://other.example/",
    b"https://other.example/v2/models/private/",
    b"//other.example/",
    b"other.example:443",
    b"*",
    b"",
    b"/v2/models/public",
]
SEGMENTS = [b"a", b"infer", b"private", b"public"] * 2 + [
    b".",
    b"..",
    b"%2e",
    b"%2E%2e",
    b".%2e",
    b"%2F",
    b"%2f",
    b"%5C",
    b"\\",
    b"%00",
    b"\x00",
    b"%ff",
    b"\xff",
    b"caf\xc3\xa9",
    b";p=1",
    b"",
    b"%0d%0a",
    b"\t",
    b" ",
    b"#frag",
    b"%70ublic",
    b"%zz",
    b"~u",
]
QUERIES = [b""] * 4 + [b"?q=1", b"?x=/../y", b"?z=%2F", b"?", b"?a=%00"]
VERSIONS = [b"HTTP/1.1"] * 12 + [
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"",
]


# Line ends: all CRLF, or one line (by index; past the last field: the empty line) ending
# otherwise. One draw, not one per line: drawing is what a generated example costs most.
LINE_ENDS = st.sampled_from(
    [None] * 24 + [(i, end) for i in range(6) for end in (b"\n", b"\r", b"\r\r\n", b"\n\r")]
)
PREFIX = st.sampled_from(PREFIXES)
SEGMENT_LISTS = st.lists(st.sampled_from(SEGMENTS), max_size=4)
QUERY = st.sampled_from(QUERIES)
METHOD = st.sampled_from(METHODS)
VERSION = st.sampled_from(VERSIONS)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    return draw(PREFIX) + b"/".join(draw(SEGMENT_LISTS)) + draw(QUERY)


# Content-Length values, from the body's length `n`.
LENGTHS = st.sampled_from(
    [
        lambda n: b"%d" % n,
        lambda n: b"%d" % (n + 1),
        lambda n: b"%d" % max(n - 1, 0),
        lambda n: b"0",
        lambda n: b"00%d" % n,
        lambda n: "\u00b2".encode(),
        lambda n: b"+%d" % n,
        lambda n: b"-1",
        lambda n: b"0x%x" % n,
        lambda n: b"%d, %d" % (n, n),
        lambda n: b"%d, %d" % (n, n + 1),
        lambda n: b" %d " % n,
        lambda n: b"99999999999999999999",
    ]
)
GENERIC_VALUES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"\xff\xfe",
            b"caf\xc3\xa9",
            b"a\x00b",
            b"a\r\nX-Mark: injected",
            b"a\r\n folded",
            b"\t",
            b"",
        ]
    ),
)
VALUES = {
    b"transfer-encoding": st.sampled_from(
        [
            b"chunked",
            b"gzip, chunked",
            b"chunked, gzip",
            b"identity",
            b"xchunked",
            b"Chunked",
            b"chunked, chunked",
            b"\tchunked",
        ]
    ),
    b"content-encoding": st.sampled_from([b"gzip", b"br", b"identity", b"gzip, gzip", b"x"]),
    b"connection": st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"TE", b"close, upgrade"]),
    b"upgrade": st.sampled_from([b"h2c", b"websocket", b"tcp", b"foo"]),
    b"expect": st.sampled_from([b"100-continue", b"x"]),
    b"host": st.sampled_from([b"edge.test", b"other.example", b"", b"a b"]),
}
FIELD_NAMES = st.sampled_from(
    [
        b"Content-Length",
        b"Transfer-Encoding",
        b"Content-Encoding",
        b"Connection",
        b"Upgrade",
        b"Expect",
        b"Host",
        b"X-Request-Id",
        b"Accept-Encoding",
        b"Content-Type",
        b"Trailer",
        b"X-A",
        b"X A",
        b"X\xffA",
        b"",
    ]
)
CHUNK_SIZES = st.sampled_from(
    [lambda n: b"%x" % n] * 6
    + [lambda n: b"%X" % n, lambda n: b"00%x" % n, lambda n: b"%x " % n, lambda n: b"%x" % (n + 1)]
)
CHUNK_EXTENSIONS = st.sampled_from([b""] * 6 + [b";a=b", b";a", b"; a=b"])
CHUNK_ENDS = st.sampled_from([b"\r\n"] * 8 + [b"", b"\n"])
TRAILERS = st.sampled_from(
    [b""] * 6 + [b"X-Trailer: t\r\n", b"X-Mark: trailer\r\n", b"Content-Length: 5\r\n"]
)
LAST_ENDS = st.sampled_from([b"\r\n"] * 8 + [b""])
BODIES = st.one_of(
    st.binary(max_size=24),
    st.just(b'{"a": 1}'),
    st.just(SMUGGLED),
    st.binary(max_size=8).map(lambda b: b + SMUGGLED),
)
FRAMINGS = st.sampled_from(["none", "length", "length", "chunked", "chunked"])


@st.composite
def chunked_bodies(draw: st.DrawFn, body: bytes) -> bytes:
    cut = draw(st.integers(0, len(body)))
    out = b""
    for part in (body[:cut], body[cut:]):
        if part:
            size = draw(CHUNK_SIZES)(len(part))
            out += size + draw(CHUNK_EXTENSIONS) + b"\r\n" + part + draw(CHUNK_ENDS)
    return out + b"0\r\n" + draw(TRAILERS) + draw(LAST_ENDS)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    version = draw(VERSION)
    line = draw(METHOD) + b" " + draw(targets()) + (b" " + version if version else b"")
    body = draw(BODIES)
    framing = draw(FRAMINGS)
    fields = [(b"Host", b"edge.test"), (b"X-Mark", b"m1")]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(FIELD_NAMES)
        lowered = name.lower()
        if lowered == b"content-length":
            value = draw(LENGTHS)(len(body))
        else:
            value = draw(VALUES.get(lowered, GENERIC_VALUES))
        fields.append((name, value))
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked_bodies(body))
    else:
        body = b""
    fields = draw(st.permutations(fields))
    return (
        join_lines([line, *(name + b": " + value for name, value in fields)], draw(LINE_ENDS))
        + body
    )


# --- the property -------------------------------------------------------------------------------


def judge(conv: Conversation, reading: Reading, seen_marks: list[list[bytes]]) -> None:
    assert conv.garbled is None, f"the gateway answered bytes llhttp refuses: {conv}"
    bad = [s for s in conv.statuses if s >= 500 and s not in REFUSALS_5XX]
    assert not bad, f"a server error: {conv}"
    if conv.hung:
        assert reading.incomplete or reading.ambiguous, (
            f"the gateway waits for bytes although llhttp read every request whole: {conv}"
        )
    for k, answer in enumerate(conv.answers):
        marks = answer.marks
        if marks is None:
            continue  # not forwarded (refused, or the gateway's own answer)
        if k >= len(reading.marks):
            assert reading.ambiguous, f"answer {k} forwarded a request llhttp never read: {conv}"
            assert marks == ["m2"], f"answer {k} is not the probe's: {conv}"
        else:
            expected = [m.decode("latin-1") for m in reading.marks[k]]
            assert marks == expected, f"answer {k} belongs to {marks}, not {expected}: {conv}"
        echoed = answer.echoed
        assert echoed is not None
        problems = forwarding_problems(echoed, answer.route)
        assert problems == [], f"answer {k}: {problems}: {conv}"
    allowed = list(reading.marks)
    if reading.ambiguous:
        allowed.append([b"m2"])
    for carried in seen_marks:
        assert carried in allowed, f"a backend received a request carrying {carried}: {conv}"


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(request=requests())
def test_generated_requests_never_desync_the_edge(edge: Edge, request: bytes) -> None:
    edge.take()
    data = request + PROBE
    reading = llhttp_reading(data)
    wait = INCOMPLETE_WAIT if reading.incomplete or reading.ambiguous else ANSWER_WAIT
    conv = converse(edge.port, data, expect=max(1, len(reading.marks)), wait=wait)
    seen = [s.header("x-mark") for s in edge.take()]
    judge(conv, reading, seen)
    edge.assert_serving()
