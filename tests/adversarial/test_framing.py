"""Message framing at the edge: smuggling attempts, refused framings, and pipelining.

Every case is followed, on the same connection, by a plain request. A framing the gateway
refuses must be a 400 that closes the connection (after a framing error nobody knows where
the next request starts). A framing it accepts must leave the connection in step: the
plain request gets its own answer, and a request hidden in a body never reaches a backend.
"""

from __future__ import annotations

import pytest

from tests.adversarial.edge import NEXT, Conversation, Edge, Seen, converse, get

# A request hidden in a body: if a backend ever sees it, the gateway and the client framed
# the message differently.
SMUGGLED = b"GET /v2/models/private/smuggled HTTP/1.1\r\nHost: edge.test\r\n\r\n"
ATTACK = b"/v2/models/public/attack"


def request(
    *fields: bytes, body: bytes = b"", line: bytes = b"POST " + ATTACK + b" HTTP/1.1"
) -> bytes:
    return (
        line + b"\r\nHost: edge.test\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


LAST = b"0\r\n\r\n"
CL_TE_BODY = LAST + SMUGGLED

REFUSED = [
    pytest.param(
        request(
            b"Content-Length: %d" % len(CL_TE_BODY), b"Transfer-Encoding: chunked", body=CL_TE_BODY
        ),
        id="content-length-then-transfer-encoding",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", b"Content-Length: 3", body=CL_TE_BODY),
        id="transfer-encoding-then-content-length",
    ),
    pytest.param(
        request(
            b"Transfer-Encoding: identity",
            b" chunked",
            b"Content-Length: %d" % len(CL_TE_BODY),
            body=CL_TE_BODY,
        ),
        id="transfer-encoding-folded",
    ),
    pytest.param(
        request(
            b"Content-Length: 2", b"Content-Length: %d" % (2 + len(SMUGGLED)), body=b"{}" + SMUGGLED
        ),
        id="content-length-twice-differing",
    ),
    pytest.param(
        request(b"Content-Length: 2, %d" % (2 + len(SMUGGLED)), body=b"{}" + SMUGGLED),
        id="content-length-list-differing",
    ),
    pytest.param(
        request("Content-Length: \u00b2".encode(), body=b"{}"), id="content-length-superscript-two"
    ),
    pytest.param(
        request("Content-Length: \u0662".encode(), body=b"{}"), id="content-length-arabic-indic-two"
    ),
    pytest.param(request(b"Content-Length: +2", body=b"{}"), id="content-length-plus"),
    pytest.param(request(b"Content-Length: -2", body=b"{}"), id="content-length-negative"),
    pytest.param(request(b"Content-Length: 0x2", body=b"{}"), id="content-length-hex"),
    pytest.param(request(b"Content-Length: 1 1", body=b"{}"), id="content-length-with-space"),
    pytest.param(
        request(b"Content-Length: 18446744073709551618", body=b"{}"), id="content-length-overflow"
    ),
    pytest.param(
        request(b"Content-Length : 2", body=b"{}"), id="content-length-space-before-colon"
    ),
    pytest.param(
        request(b"Transfer-Encoding : chunked", body=chunk(b"{}") + LAST),
        id="transfer-encoding-space-before-colon",
    ),
    pytest.param(request(b"X-Folded: a", b" b", b"Content-Length: 2", body=b"{}"), id="obs-fold"),
    pytest.param(
        b"POST " + ATTACK + b" HTTP/1.1\nHost: edge.test\nContent-Length: 2\n\n{}",
        id="bare-lf-everywhere",
    ),
    pytest.param(
        b"POST " + ATTACK + b" HTTP/1.1\r\nHost: edge.test\nContent-Length: 2\r\n\r\n{}",
        id="bare-lf-in-a-field",
    ),
    pytest.param(
        b"POST " + ATTACK + b" HTTP/1.1\r\nHost: edge.test\rContent-Length: 2\r\n\r\n{}",
        id="bare-cr-in-a-field",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"zz\r\n{}\r\n" + LAST),
        id="chunk-size-not-hex",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"-2\r\n{}\r\n" + LAST),
        id="chunk-size-negative",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"0x2\r\n{}\r\n" + LAST),
        id="chunk-size-0x",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"FFFFFFFFFFFFFFFFFF\r\n{}\r\n" + LAST),
        id="chunk-size-overflow",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"10000000000000002\r\n{}\r\n" + LAST),
        id="chunk-size-wraps-to-two",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"2 \r\n{}\r\n" + LAST),
        id="chunk-size-trailing-space",
    ),
    pytest.param(request(b"Transfer-Encoding: chunked", body=b"2\n{}\n0\n\n"), id="chunk-bare-lf"),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"2;a\nb\r\n{}\r\n" + LAST),
        id="chunk-extension-bare-lf",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"2\r\n{}XX" + LAST),
        id="chunk-data-longer-than-its-size",
    ),
    pytest.param(
        request(
            b"Transfer-Encoding: chunked", body=chunk(b"{}") + b"0\r\nContent-Length: 50\r\n\r\n"
        ),
        id="content-length-in-trailer",
    ),
    pytest.param(
        request(b"Transfer-Encoding: xchunked", body=chunk(b"{}") + LAST),
        id="transfer-encoding-unknown",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked, identity", body=chunk(b"{}") + LAST),
        id="transfer-encoding-chunked-not-last",
    ),
    pytest.param(
        request(
            b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=chunk(b"{}") + LAST
        ),
        id="transfer-encoding-chunked-twice",
    ),
    pytest.param(
        request(
            b"Transfer-Encoding: chunked",
            body=chunk(b"{}") + LAST,
            line=b"POST " + ATTACK + b" HTTP/1.0",
        ),
        id="transfer-encoding-in-http-1.0",
    ),
    pytest.param(request(b"Host: other.example", body=b""), id="host-twice"),
    pytest.param(b"GET " + ATTACK + b" HTTP/1.1\r\n\r\n", id="http-1.1-without-host"),
    pytest.param(b"GET " + ATTACK + b" HTTP/1.2\r\nHost: edge.test\r\n\r\n", id="http-1.2"),
    pytest.param(
        b"get " + ATTACK + b" HTTP/1.1\r\nHost: edge.test\r\n\r\n", id="method-lower-case"
    ),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
]


@pytest.mark.parametrize("attack", REFUSED)
def test_refused_framing_is_400_and_closes(edge: Edge, attack: bytes) -> None:
    conv = converse(edge.port, attack + get(NEXT), expect=2)
    conv.assert_sound()
    assert conv.statuses == [400], conv
    assert conv.closed, f"the connection stayed open after a framing error: {conv}"
    assert edge.take() == [], "a request with a refused framing reached a backend"


VERSIONS = [
    pytest.param(b" HTTP/2.0", id="http-2.0"),
    pytest.param(b" HTTP/0.9", id="http-0.9"),
    pytest.param(b"", id="no-version"),
]


@pytest.mark.parametrize("keep_alive", [False, True], ids=["plain", "keep-alive"])
@pytest.mark.parametrize("version", VERSIONS)
def test_only_http_1x_requests_are_served(edge: Edge, version: bytes, keep_alive: bool) -> None:
    """An HTTP/1.x server answers other versions with 505 (or 400) in HTTP/1.1, and closes:
    answering in the client's version would be a status line no HTTP/1.1 client can frame."""
    fields = b"Host: edge.test\r\n" + (b"Connection: keep-alive\r\n" if keep_alive else b"")
    attack = b"GET " + ATTACK + version + b"\r\n" + fields + b"\r\n"
    # a request after one that ends the connection is refused whole, hiding the answer
    conv = converse(edge.port, attack + (get(NEXT) if keep_alive else b""), expect=1 + keep_alive)
    assert conv.raw.startswith(b"HTTP/1."), f"answered {conv.raw[:20]!r}"
    conv.assert_sound(refusals=(505,))
    assert conv.statuses in ([505], [400]), conv
    assert conv.closed, conv
    assert edge.take() == []


def test_unknown_transfer_coding_is_refused_not_forwarded_as_identity(edge: Edge) -> None:
    """A transfer coding the gateway does not decode cannot be forwarded: it is hop by hop, and
    the backend would get its coded bytes as if they were the body (RFC 9112 6.1: 501)."""
    attack = request(b"Transfer-Encoding: gzip, chunked", body=chunk(b'{"a":1}') + LAST)
    conv = converse(edge.port, attack + get(NEXT), expect=2)
    conv.assert_sound(refusals=(501,))
    assert conv.statuses[:1] in ([400], [501]), conv
    assert conv.closed, conv
    assert edge.take() == []


SERVED = [
    pytest.param(get(b"/v2/models/public/first"), b"/v2/models/public/first", b"", id="pipelined"),
    pytest.param(request(b"Content-Length: 2", body=b"{}"), ATTACK, b"{}", id="content-length"),
    pytest.param(
        request(b"Content-Length: 002", body=b"{}"),
        ATTACK,
        b"{}",
        id="content-length-leading-zeros",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=chunk(b'{"a":') + chunk(b"1}") + LAST),
        ATTACK,
        b'{"a":1}',
        id="chunked",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"2;ext=1\r\n{}\r\n" + LAST),
        ATTACK,
        b"{}",
        id="chunk-extension",
    ),
    pytest.param(
        request(b"Transfer-Encoding: chunked", body=b"0002\r\n{}\r\n" + LAST),
        ATTACK,
        b"{}",
        id="chunk-size-leading-zeros",
    ),
    pytest.param(
        request(b"Content-Length: 2", b"Expect: 100-continue", body=b"{}"),
        ATTACK,
        b"{}",
        id="expect-100-continue",
    ),
    pytest.param(
        request(b"Content-Length: 5", body=b"hello", line=b"GET " + ATTACK + b" HTTP/1.1"),
        ATTACK,
        b"hello",
        id="get-with-a-body",
    ),
]


@pytest.mark.parametrize(("first", "target", "body"), SERVED)
def test_accepted_framing_keeps_the_connection_in_step(
    edge: Edge, first: bytes, target: bytes, body: bytes
) -> None:
    conv = converse(edge.port, first + get(NEXT), expect=2)
    conv.assert_sound()
    assert conv.answers and conv.answers[0].echoed == target, conv
    seen = edge.take()
    assert seen and seen[0].target == target
    assert seen[0].body == body
    if body:
        assert seen[0].header("content-length") == [str(len(body)).encode()]
        assert seen[0].header("transfer-encoding") == []
    assert_next_in_step(conv, seen)


def assert_next_in_step(conv: Conversation, seen: list[Seen]) -> None:
    """After the first answer, the gateway closed the connection (it may, any time), or the
    plain request got its own answer and reached the backend as sent."""
    if len(conv.answers) == 1:
        assert conv.closed, conv
        assert len(seen) == 1
        return
    assert [a.echoed for a in conv.answers[1:]] == [NEXT], conv
    assert [s.target for s in seen[1:]] == [NEXT]
    assert seen[1].body == b""


def test_trailer_fields_stay_with_their_message(edge: Edge) -> None:
    """Trailer fields end the chunked message they belong to: none may reach the next request
    on the connection (where it would add, say, credentials the client never sent with it)."""
    first = request(
        b"Transfer-Encoding: chunked",
        body=chunk(b"{}")
        + b"0\r\nX-Trailer-One: 1\r\nAuthorization: Bearer from-a-trailer\r\n\r\n",
    )
    conv = converse(edge.port, first + get(NEXT), expect=2)
    conv.assert_sound()
    assert conv.answers and conv.answers[0].echoed == ATTACK, conv
    seen = edge.take()
    assert_next_in_step(conv, seen)
    if len(seen) == 2:
        leaked = [
            (k, v) for k, v in seen[1].headers if k.lower() in (b"x-trailer-one", b"authorization")
        ]
        assert leaked == [], f"trailer fields of the first request reached the second: {leaked}"


UPGRADES = [
    pytest.param((b"Connection: Upgrade", b"Upgrade: websocket"), id="websocket"),
    pytest.param((b"Connection: Upgrade", b"Upgrade: h2c"), id="h2c"),
    pytest.param(
        (
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAAQAAP__",
        ),
        id="h2c-with-settings",
    ),
    pytest.param((b"Connection: Upgrade", b"Upgrade: tcp"), id="tcp"),
]


@pytest.mark.parametrize("fields", UPGRADES)
def test_a_declined_upgrade_leaves_the_connection_in_step(
    edge: Edge, fields: tuple[bytes, ...]
) -> None:
    """The gateway switches no protocol: the request is answered (or refused) as HTTP/1.1, and
    the bytes after it are the next request (or the connection closes), never swallowed."""
    conv = converse(edge.port, get(b"/v2/models/public/up", *fields) + get(NEXT), expect=2)
    conv.assert_sound()
    assert conv.statuses[0] == 200 or 400 <= conv.statuses[0] < 500, conv
    if len(conv.answers) == 2:
        assert conv.answers[1].echoed == NEXT, conv
    else:
        assert conv.closed, conv
    seen = edge.take()
    assert all(not s.header("upgrade") for s in seen), "an Upgrade field reached a backend"
    assert [s.target for s in seen] in (
        [b"/v2/models/public/up", NEXT][: len(seen)],
        [NEXT],
    )
