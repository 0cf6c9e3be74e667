"""The bytes/text boundary of the data listener: what a client sent, made safe to use once.

Every byte a client sends is hostile until parsed. The HTTP parser has checked the framing;
this module checks what the rest of the gateway would otherwise have to distrust
everywhere: the request target (normalised once, so the path a route matches is the path a
backend receives), header values that are not UTF-8, digits that are not ASCII, and JSON
text that holds lone surrogates. Each problem becomes a `ClientError` (a 4xx in the
route's protocol), never a traceback further in.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from gateway.errors import ClientError, HeadersTooLarge

# A target that needs no work: origin-form, only path characters RFC 3986 allows unescaped,
# no percent-escapes and no dot segment; the query, if any, visible ASCII without '#'.
_PLAIN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_CHARS = re.compile(r"[\x21-\x22\x24-\x7e]*")
_ESCAPE = re.compile(r"%(..)?")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Escapes that would change what a path means once a backend decodes it: a second kind of
# path separator, or a byte no file or model name holds.
_REFUSED_ESCAPES = {0x2F: "an encoded slash (%2F)", 0x5C: "an encoded backslash (%5C)"}


def normalize_target(target: str) -> tuple[str, str]:
    """The decoded path a route matches, and the exact path-and-query a backend receives.

    Only origin-form targets (`/path?query`) are served; absolute-form and authority-form
    ones are refused, as are escapes that cannot be normalised safely (an encoded slash or
    backslash, NUL or another control character, invalid escapes, text that is not
    UTF-8). Dot segments are removed (RFC 3986 section 5.2.4) and escapes of unreserved
    characters decoded (section 6.2.2.2), so `/public/../private` is `/private` for the
    matcher and for the backend alike.
    """
    path, sep, query = target.partition("?")
    if _PLAIN.fullmatch(path) is not None and "/." not in path:
        if sep and _QUERY_CHARS.fullmatch(query) is None:
            raise ClientError("the request target's query has characters that must be escaped")
        return path, target
    if not target.startswith("/"):
        if target == "*":
            raise ClientError("asterisk-form request targets are not served")
        if "://" in target:
            raise ClientError("absolute-form request targets are not served; send the path only")
        raise ClientError("the request target must be a path starting with '/'")
    if _PATH_CHARS.fullmatch(path) is None:
        raise ClientError("the request path has characters that must be escaped")
    if sep and _QUERY_CHARS.fullmatch(query) is None:
        raise ClientError("the request target's query has characters that must be escaped")
    if "%" in path:
        path = _ESCAPE.sub(_normalize_escape, path)
    path = remove_dot_segments(path)
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise ClientError("the request path is not UTF-8 once decoded") from None
    return decoded, path + sep + query


def _normalize_escape(m: re.Match[str]) -> str:
    pair = m.group(1)
    if pair is None or pair[0] not in _HEX or pair[1] not in _HEX:
        raise ClientError("the request path has an invalid percent-escape")
    byte = int(pair, 16)
    if byte in _UNRESERVED:
        return chr(byte)
    refused = _REFUSED_ESCAPES.get(byte)
    if refused is not None:
        raise ClientError(f"the request path holds {refused}, which is not served")
    if byte < 0x20 or byte == 0x7F:
        raise ClientError("the request path holds an encoded control character")
    return "%" + pair.upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path.

    RFC 3986 stops a climb above the root at the root; here it is refused instead
    (`ClientError`): no honest client sends `/../`, and a traversal attempt is better
    answered than quietly routed somewhere.
    """
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for k, seg in enumerate(segments[1:], 1):
        last = k == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if not out:
                raise ClientError("the request path climbs above the root")
            out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    return "/" + "/".join(out)


def check_header_bytes(raw_headers: Iterable[tuple[bytes, bytes]], limit: int) -> None:
    """Refuse header values that are not UTF-8, and header blocks over `limit` bytes.

    No code further in ever meets such text. The parser has already refused control
    characters, malformed names, and single fields over the limit; many fields each under
    it could still add up to megabytes.
    """
    total = 0
    for name, value in raw_headers:
        total += len(name) + len(value) + 4
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                shown = name.decode("ascii", "replace")
                raise ClientError(f"header {shown} is not valid UTF-8") from None
    if total > limit:
        raise HeadersTooLarge(f"request header fields exceed {limit} bytes")


def ascii_int(text: str | None) -> int | None:
    """The value of a header that must be a decimal number, or None; only ASCII digits count.

    `str.isdigit` admits '²' and other digits `int` refuses.
    """
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 18 or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


# A JSON escape of a UTF-16 surrogate; pairs are fine, a lone one has no UTF-8 form.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def text_problem(data: bytes) -> str | None:
    """Why JSON bytes are not text a gateway passes on (not UTF-8, a lone surrogate escape),
    or None; cheap for the common case of ASCII without surrogate escapes."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "request body is not UTF-8"
    if b"\\u" in data and _SURROGATE.search(data) is not None:
        try:
            loads_client_json(data)
        except (ValueError, RecursionError):
            return "request body has a lone UTF-16 surrogate escape (or is not JSON)"
    return None


def loads_client_json(data: bytes | str) -> Any:
    """Parse JSON a client sent; raises `ValueError` for what is not JSON or not encodable.

    Python's parser accepts a lone surrogate escape (`"\\ud800"`), which then fails at the
    first `.encode()` far from here; such text is refused at the door.
    """
    value = json.loads(data)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if b"\\u" in raw and _SURROGATE.search(raw) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate") from None
    return value


# Content codings the gateway can undo to look inside a body (zlib window bits per coding).
_CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


class CodingError(ValueError):
    """An encoded body that does not decode, or decodes to more than the limit."""


def decoded(content_encoding: str | None, body: bytes, limit: int) -> bytes | None:
    """The body with its content codings undone, for a check that must read it.

    Returns the body itself when it is not encoded, None when a coding is one the gateway
    cannot undo (the body then passes unjudged), and raises `CodingError` when the body is
    corrupt or decodes to more than `limit` bytes (a decompression bomb). The body that is
    forwarded is always the one received: this is for looking, never for sending.
    """
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        bits = _CODINGS.get(coding)
        if bits is None:
            return None
        d = zlib.decompressobj(bits)
        try:
            out = d.decompress(body, limit + 1)
            if len(out) > limit or d.unconsumed_tail:
                raise CodingError(f"{coding} body decodes to more than {limit} bytes")
            out += d.flush()
        except zlib.error as e:
            raise CodingError(f"{coding} body does not decode: {e}") from None
        if not d.eof:
            raise CodingError(f"{coding} body is truncated")
        body = out
    return body


__all__ = [
    "CodingError",
    "ascii_int",
    "check_header_bytes",
    "decoded",
    "loads_client_json",
    "normalize_target",
    "remove_dot_segments",
    "text_problem",
]
