"""The hand-written HTTP/1.1 response parser the upstream client used before llhttp.

Kept only as a test oracle for the differential corpus (`test_h1_differential.py`): the
status line, header block and body framing rules are the old client's, line for line, run
over a whole answer held in memory (the bytes the server sent, then its close). Delete this
module together with the corpus's `legacy` column once the old reading is no longer worth
comparing against.
"""

from __future__ import annotations

import dataclasses
import re

from multidict import CIMultiDict, CIMultiDictProxy

HEAD_LIMIT = 64 * 1024
CHUNK_LINE_LIMIT = 4096

_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

NONE = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3


class Refused(Exception):
    """The old client would have failed the attempt as MALFORMED (or RESET: `reset`)."""

    def __init__(self, message: str, *, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


@dataclasses.dataclass(frozen=True)
class Head:
    status: int
    headers: CIMultiDictProxy[str]
    framing: int
    length: int
    keep_alive: bool


@dataclasses.dataclass(frozen=True)
class Answer:
    """A whole answer as the old client read it, and whether it would have reused the
    connection afterwards."""

    head: Head
    body: bytes
    reusable: bool


def parse_head(data: bytes, method: str) -> Head:
    """The old `gateway.proxy.h1.parse_head`: `data` ends with the CRLF of the last field."""
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
        raise Refused(f"bad status line {bytes(line[:80])!r}")
    status = int(line[9:12])
    if status < 100:
        raise Refused(f"bad status code {status}")
    if _FIELDS.fullmatch(data, end + 2) is None:
        raise Refused("malformed response header block")
    fields = data[end + 2 :].decode("utf-8", "surrogateescape").split("\r\n")
    pairs = []
    for field in fields[:-1]:
        name, _, value = field.partition(":")
        pairs.append((name, value.strip(" \t")))
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    keep_alive = line[7] == 0x31
    if keep_alive and "Connection" in headers:
        for value in headers.getall("Connection"):
            if any(t.strip(" \t").lower() == "close" for t in value.split(",")):
                keep_alive = False
    if method == "HEAD" or status < 200 or status == 204 or status == 304:
        return Head(status, headers, NONE, 0, keep_alive)
    te = headers.get("Transfer-Encoding")
    if te is not None:
        codings = [
            c
            for joined in headers.getall("Transfer-Encoding")
            for c in (p.strip(" \t").lower() for p in joined.split(","))
            if c
        ]
        if codings != ["chunked"]:
            raise Refused(f"unrequested Transfer-Encoding {te!r}")
        if "Content-Length" in headers:
            keep_alive = False
        return Head(status, headers, CHUNKED, 0, keep_alive)
    lengths = headers.getall("Content-Length", None)
    if lengths is None:
        return Head(status, headers, UNTIL_CLOSE, 0, False)
    values = {v.strip() for joined in lengths for v in joined.split(",")}
    if len(values) != 1:
        raise Refused(f"conflicting Content-Length {lengths!r}")
    value = values.pop()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise Refused(f"bad Content-Length {value!r}")
    return Head(status, headers, LENGTH, int(value), keep_alive)


def read_answer(data: bytes, method: str = "GET") -> Answer:
    """Read `data` (everything the server sent before closing) as the old client did.

    Raises `Refused` where the old client failed the attempt.
    """
    pos = 0
    answered = False
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(data) - pos > HEAD_LIMIT:
                raise Refused("response head too large")
            if pos == len(data):
                raise Refused("server closed the connection without answering", reset=True)
            raise Refused("connection closed inside the response head")
        if end - pos > HEAD_LIMIT:
            raise Refused("response head too large")
        head = parse_head(data[pos : end + 2], method)
        pos = end + 4
        answered = True
        if head.status >= 200:
            break
        if head.status == 101:
            raise Refused("unrequested protocol switch (101)")
    assert answered
    rest = data[pos:]
    if head.framing == NONE:
        return Answer(head, b"", head.keep_alive and not rest)
    if head.framing == LENGTH:
        if len(rest) < head.length:
            raise Refused(f"truncated response body: {len(rest)} of {head.length} bytes")
        return Answer(head, rest[: head.length], head.keep_alive and len(rest) == head.length)
    if head.framing == UNTIL_CLOSE:
        return Answer(head, rest, False)
    body, left = _chunked(rest)
    return Answer(head, body, head.keep_alive and not left)


def _chunked(data: bytes) -> tuple[bytes, bytes]:
    """The body of a chunked answer and what follows its end."""
    out = []
    pos = 0

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\r\n", pos)
        if end < 0:
            if len(data) - pos > CHUNK_LINE_LIMIT:
                raise Refused("chunk framing line too long")
            raise Refused("connection closed before the end of the chunk framing")
        text = data[pos:end]
        pos = end + 2
        if len(text) > CHUNK_LINE_LIMIT:
            raise Refused("chunk framing line too long")
        return text

    while True:
        text = line()
        size_text, semi, _ = text.partition(b";")
        if semi:
            size_text = size_text.rstrip(b" \t")
        if _HEX.fullmatch(size_text) is None:
            raise Refused(f"bad chunk size line {text[:40]!r}")
        size = int(size_text, 16)
        if not size:
            break
        if len(data) - pos < size:
            raise Refused("connection closed before the end of a chunk")
        out.append(data[pos : pos + size])
        pos += size
        if len(data) - pos < 2:
            raise Refused("connection closed before the end of a chunk")
        if data[pos : pos + 2] != b"\r\n":
            raise Refused("chunk data not followed by CRLF")
        pos += 2
    while trailer := line():
        if _FIELDS.fullmatch(trailer + b"\r\n") is None:
            raise Refused("malformed trailer field")
    return b"".join(out), data[pos:]
