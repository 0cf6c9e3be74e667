"""Header fields and bodies at the edge: bytes that are not UTF-8, header block limits, lone
surrogates in JSON, and content codings that must pass through byte for byte."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.adversarial.edge import Answer, Edge, converse, get, post, refused_in_step

TARGET = b"/v2/models/public/fields"


# --- header fields ------------------------------------------------------------------------

NOT_UTF8 = [
    pytest.param(b"\xff\xfe", id="invalid-bytes"),
    pytest.param(b"caf\xe9", id="latin-1"),
    pytest.param(b"\xc3\x28", id="bad-continuation"),
    pytest.param(b"\xed\xa0\x80", id="encoded-surrogate"),
    pytest.param(b"\xc0\xaf", id="overlong-slash"),
]


@pytest.mark.parametrize("value", NOT_UTF8)
def test_header_value_not_utf8_is_4xx(edge: Edge, value: bytes) -> None:
    refused_in_step(edge, get(TARGET, b"X-Custom: " + value))


@pytest.mark.parametrize(
    "name", [b"X-Request-Id", b"Authorization", b"Content-Type", b"User-Agent", b"Accept-Encoding"]
)
def test_any_header_not_utf8_is_4xx(edge: Edge, name: bytes) -> None:
    refused_in_step(edge, get(TARGET, name + b": a\xffb"))


def test_utf8_header_value_is_forwarded_byte_for_byte(edge: Edge) -> None:
    value = "caf\u00e9 \u2603 \U0001f600".encode()
    conv = converse(edge.port, get(TARGET, b"X-Custom: " + value))
    conv.assert_sound()
    assert conv.statuses == [200], conv
    [seen] = edge.take()
    assert seen.header("x-custom") == [value]


@pytest.mark.parametrize("char", [b"\x00", b"\x01", b"\x7f", b"\x1b"])
def test_control_characters_in_header_values_are_400(edge: Edge, char: bytes) -> None:
    refused_in_step(edge, get(TARGET, b"X-Custom: a" + char + b"b"), (400,))


def test_header_block_over_the_limit_is_refused(edge: Edge) -> None:
    """96 KiB of fields, each under the per-line limit: too much for a request head."""
    fields = [b"X-Big-%d: " % i + b"a" * 8000 for i in range(12)]
    refused_in_step(edge, get(TARGET, *fields), (400, 431))


def test_too_many_header_fields_are_refused(edge: Edge) -> None:
    refused_in_step(edge, get(TARGET, *[b"X-F-%d: 1" % i for i in range(300)]), (400, 431))


def test_a_long_header_line_is_refused(edge: Edge) -> None:
    refused_in_step(edge, get(TARGET, b"X-Long: " + b"a" * 70_000), (400, 431))


def test_an_ordinary_header_block_is_served_whole(edge: Edge) -> None:
    """8 KiB of fields is well inside any sensible limit."""
    fields = [b"X-F-%d: " % i + b"v" * 200 for i in range(40)]
    conv = converse(edge.port, get(TARGET, *fields))
    conv.assert_sound()
    assert conv.statuses == [200], conv
    [seen] = edge.take()
    for field in fields:
        name, value = field.split(b": ", 1)
        assert seen.header(name.decode()) == [value]


# --- JSON bodies with lone surrogates -------------------------------------------------------

KSERVE = b"/v2/models/public/infer"
CHAT = b"/v1/chat/completions"


def kserve_body(text: str) -> bytes:
    # `text` is JSON source: escapes stay as written
    return (
        '{"inputs": [{"name": "' + text + '", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}'
    ).encode()


def chat_body(text: str) -> bytes:
    return ('{"model": "m", "messages": [{"role": "user", "content": "' + text + '"}]}').encode()


LONE = [
    pytest.param("\\ud800", id="high"),
    pytest.param("\\udc00", id="low"),
    pytest.param("\\uDBFF", id="high-upper-case"),
    pytest.param("a\\ud800\\u0041", id="high-then-not-low"),
    pytest.param("\\udc00\\ud800", id="reversed-pair"),
    pytest.param("\\ud800\\ud800", id="two-highs"),
]


def assert_protocol_error(answer: Answer, protocol: str) -> None:
    """A 400 in the route's protocol: JSON with an `error` member.

    KServe v2 clients read `error` as a message; OpenAI clients read `error.message`.
    """
    assert answer.status == 400, answer
    assert (answer.header("content-type") or b"").startswith(b"application/json"), answer
    err = answer.json()["error"]
    if protocol == "openai":
        assert isinstance(err, dict) and isinstance(err.get("message"), str), answer
    else:
        assert isinstance(err, str) or isinstance(err.get("message"), str), answer


@pytest.mark.parametrize("text", LONE)
def test_lone_surrogate_in_kserve_json_is_400(edge: Edge, text: str) -> None:
    assert_protocol_error(refused_in_step(edge, post(KSERVE, kserve_body(text))), "kserve-v2")


@pytest.mark.parametrize("text", LONE)
def test_lone_surrogate_in_openai_json_is_400(edge: Edge, text: str) -> None:
    assert_protocol_error(refused_in_step(edge, post(CHAT, chat_body(text))), "openai")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(KSERVE, kserve_body("\\ud83d\\ude00"), id="kserve-surrogate-pair"),
        pytest.param(CHAT, chat_body("\\ud83d\\ude00"), id="openai-surrogate-pair"),
        pytest.param(KSERVE, kserve_body("\\\\ud800"), id="kserve-escaped-backslash"),
        pytest.param(CHAT, chat_body("\\\\udc00 \\\\\\\\ud800"), id="openai-escaped-backslashes"),
        pytest.param(KSERVE, kserve_body("\U0001f600"), id="kserve-raw-astral"),
    ],
)
def test_valid_json_reaches_the_backend_byte_for_byte(edge: Edge, path: bytes, body: bytes) -> None:
    json.loads(body)  # the case itself is valid JSON
    conv = converse(edge.port, post(path, body))
    conv.assert_sound()
    assert conv.statuses == [200], conv
    [seen] = edge.take()
    assert seen.body == body


@pytest.mark.parametrize(
    ("path", "body", "protocol"),
    [
        pytest.param(KSERVE, b'{"inputs": [{"name": "caf\xe9"}]}', "kserve-v2", id="kserve"),
        pytest.param(
            CHAT, b'{"model": "m", "messages": [{"content": "\xff\xfe"}]}', "openai", id="openai"
        ),
    ],
)
def test_json_body_not_utf8_is_400(edge: Edge, path: bytes, body: bytes, protocol: str) -> None:
    assert_protocol_error(refused_in_step(edge, post(path, body)), protocol)


# --- content codings: the gateway passes them through ------------------------------------------

PAYLOAD = json.dumps({"inputs": [{"name": "x", "shape": [3], "data": [1, 2, 3]}] * 20}).encode()
GZIPPED = gzip.compress(PAYLOAD, mtime=0)


def chunked(data: bytes, size: int = 100) -> bytes:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "path", [pytest.param(KSERVE, id="kserve"), pytest.param(b"/plain/upload", id="http")]
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_gzip_request_body_reaches_the_backend_byte_for_byte(
    edge: Edge, path: bytes, framing: str
) -> None:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: edge.test\r\nContent-Type: application/json\r\n"
    head += b"Content-Encoding: gzip\r\n"
    if framing == "chunked":
        raw = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(GZIPPED)
    else:
        raw = head + b"Content-Length: %d\r\n\r\n" % len(GZIPPED) + GZIPPED
    conv = converse(edge.port, raw)
    conv.assert_sound()
    assert conv.statuses == [200], conv
    [seen] = edge.take()
    assert seen.body == GZIPPED, "the backend did not get the gzip bytes the client sent"
    assert seen.header("content-encoding") == [b"gzip"]
    assert seen.header("content-length") == [str(len(GZIPPED)).encode()]


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        pytest.param(b"br", b"\x1b\x03\x00\xf8\xa5\x8c\x00", id="brotli"),
        pytest.param(b"zstd", b"\x28\xb5\x2f\xfd\x00\x58\x11\x00\x00", id="zstd"),
        pytest.param(b"gzip", b"this is not gzip", id="gzip-that-is-not"),
        pytest.param(b"gzip", GZIPPED[: len(GZIPPED) // 2], id="gzip-cut-short"),
        pytest.param(b"deflate", b"\x00\x01\x02", id="deflate-that-is-not"),
    ],
)
def test_content_coded_body_is_opaque_to_the_gateway(
    edge: Edge, coding: bytes, body: bytes
) -> None:
    """The gateway never decodes a request body: whatever the coding, the bytes go through."""
    conv = converse(
        edge.port,
        post(
            b"/plain/upload",
            body,
            b"Content-Encoding: " + coding,
            content_type=b"application/octet-stream",
        ),
    )
    conv.assert_sound()
    assert conv.statuses == [200], conv
    [seen] = edge.take()
    assert seen.body == body
    assert seen.header("content-encoding") == [coding]


@pytest.mark.parametrize(
    "path", [pytest.param(KSERVE, id="kserve"), pytest.param(b"/v1/models", id="openai")]
)
def test_gzip_response_passes_to_the_client_untouched(edge: Edge, path: bytes) -> None:
    """A backend honouring the client's Accept-Encoding is not broken: its JSON is coded."""
    conv = converse(edge.port, get(path, b"Accept-Encoding: gzip", b"x-echo: gzip"))
    conv.assert_sound()
    assert conv.statuses == [200], conv
    answer = conv.answers[0]
    assert answer.header("content-encoding") == b"gzip"
    [seen] = edge.take()
    assert seen.header("accept-encoding") == [b"gzip"]
    assert answer.body == edge.backend.payload(seen), "the coded body was changed"
    assert json.loads(gzip.decompress(answer.body))["target"] == path.decode()
