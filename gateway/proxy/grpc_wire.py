"""Just enough of the protobuf wire format to route a Triton gRPC call without decoding it.

The gateway forwards gRPC messages as raw bytes. To route, stick and key the cache it
needs a few top-level fields: the model name (field 1 of `ModelInferRequest` and of the
model-level requests), the version (field 2) and Triton's sequence parameters
(`sequence_id`, `sequence_start`, `sequence_end` in the `parameters` map, field 4). The
scan walks the top-level fields only and skips every length-delimited field by its
length, so a request's tensors (fields 5 to 7) cost nothing however large they are.

Protobuf's own rules hold: the last occurrence of a scalar field wins, map entries with
the same key merge with the last winning, unknown fields are skipped. Bytes that are not
a well-formed message raise `WireError` (the edge answers `INVALID_ARGUMENT`).

Also here: the few messages the gateway makes itself (health probes, the request id of a
cached answer rewritten for the request it now answers), encoded by hand so that the
gateway needs no protobuf runtime on its request path.
"""

from __future__ import annotations

from dataclasses import dataclass

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True, slots=True)
class TritonSequence:
    """A Triton sequence request: all its requests must reach the same model instance."""

    id: str  # an int64/uint64 id as its decimal text, or a string id as is
    start: bool
    end: bool


@dataclass(frozen=True, slots=True)
class RequestScan:
    """What routing needs from a request message; empty strings when a field is absent."""

    model: str
    version: str
    sequence: TritonSequence | None


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos  # protobuf keeps the low 64 bits
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _skip(data: bytes, pos: int, end: int, wire: int) -> int:
    if wire == _VARINT:
        return _varint(data, pos, end)[1]
    if wire == _LEN:
        n, pos = _varint(data, pos, end)
        pos += n
    elif wire == _I64:
        pos += 8
    elif wire == _I32:
        pos += 4
    else:
        raise WireError(f"unsupported wire type {wire}")
    if pos > end:
        raise WireError("truncated field")
    return pos


def _text(data: bytes, start: int, end: int) -> str:
    try:
        return data[start:end].decode()
    except UnicodeDecodeError:
        raise WireError("a string field is not UTF-8") from None


def scan_request(data: bytes, model_field: int = 1, version_field: int = 2) -> RequestScan:
    """Model, version and sequence of a request message (`ModelInferRequest` by default).

    Repository load/unload requests carry the model in field 2 (`model_field=2`,
    `version_field=0`). Raises `WireError` for bytes that are not a message.
    """
    model = version = ""
    params: list[tuple[int, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        if wire == _LEN:
            n, pos = _varint(data, pos, end)
            stop = pos + n
            if stop > end:
                raise WireError("truncated field")
            if field == model_field:
                model = _text(data, pos, stop)
            elif field == version_field:
                version = _text(data, pos, stop)
            elif field == 4 and model_field == 1:
                params.append((pos, stop))
            pos = stop
        else:
            # a known field with another wire type is an unknown field to protobuf too
            pos = _skip(data, pos, end, wire)
    sequence = _sequence(data, params) if params else None
    return RequestScan(model, version, sequence)


def _sequence(data: bytes, entries: list[tuple[int, int]]) -> TritonSequence | None:
    seq_id: str | None = None
    start = end_ = False
    for a, b in entries:
        key, value = _map_entry(data, a, b)
        if key == "sequence_id":
            seq_id = _param_text(data, value) if value is not None else None
        elif key == "sequence_start":
            start = _param_bool(data, value) if value is not None else False
        elif key == "sequence_end":
            end_ = _param_bool(data, value) if value is not None else False
    if not seq_id:  # Triton: id 0 (or "") means "not a sequence"
        return None
    return TritonSequence(seq_id, start, end_)


Spans = list[tuple[int, int]]


def _map_entry(data: bytes, pos: int, end: int) -> tuple[str, Spans | None]:
    """Key and value spans of one `map<string, InferParameter>` entry.

    A value given twice in one entry is one message merged from both, so every span is kept.
    """
    key = ""
    value: Spans | None = None
    while pos < end:
        tag, pos = _varint(data, pos, end)
        field, wire = tag >> 3, tag & 7
        if field in (1, 2) and wire == _LEN:
            n, pos = _varint(data, pos, end)
            if pos + n > end:
                raise WireError("truncated map entry")
            if field == 1:
                key = _text(data, pos, pos + n)
            elif value is None:
                value = [(pos, pos + n)]
            else:
                value.append((pos, pos + n))
            pos += n
        elif field == 0:
            raise WireError("field number 0")
        else:
            pos = _skip(data, pos, end, wire)
    return key, value


def _param_fields(data: bytes, spans: Spans) -> dict[int, int | str]:
    """The `InferParameter` oneof member set last, with its value."""
    out: dict[int, int | str] = {}
    for pos, end in spans:
        out = _param_span(data, pos, end, out)
    return out


def _param_span(data: bytes, pos: int, end: int, out: dict[int, int | str]) -> dict[int, int | str]:
    while pos < end:
        tag, pos = _varint(data, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise WireError("field number 0")
        # a oneof: the last member set is the one
        if wire == _VARINT and field in (1, 2, 5):
            v, pos = _varint(data, pos, end)
            out = {field: v}
        elif wire == _LEN and field == 3:
            n, pos = _varint(data, pos, end)
            if pos + n > end:
                raise WireError("truncated parameter")
            out = {3: _text(data, pos, pos + n)}
            pos += n
        elif wire == _I64 and field == 4:
            pos = _skip(data, pos, end, wire)
            out = {4: 0}  # a double is no sequence id
        else:
            pos = _skip(data, pos, end, wire)
    return out


def _param_text(data: bytes, spans: Spans) -> str | None:
    fields = _param_fields(data, spans)
    if 2 in fields:  # int64
        v = int(fields[2])
        v = v - (1 << 64) if v >= 1 << 63 else v
        return str(v) if v else None
    if 5 in fields:  # uint64
        return str(fields[5]) if fields[5] else None
    if 3 in fields:  # string ids (Triton accepts them too)
        return str(fields[3])
    return None


def _param_bool(data: bytes, spans: Spans) -> bool:
    fields = _param_fields(data, spans)
    return bool(fields.get(1, 0))


# --- writing ------------------------------------------------------------------------------


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string_field(field: int, value: str) -> bytes:
    raw = value.encode()
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(raw)) + raw


def without_field(data: bytes, field: int) -> bytes:
    """The message with every occurrence of one top-level field removed (others untouched)."""
    out = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = _varint(data, pos, end)
        pos = _skip(data, pos, end, key & 7)
        if key >> 3 != field:
            out += data[start:pos]
    return bytes(out)


def with_string_field(data: bytes, field: int, value: str) -> bytes:
    """The message with one string field set to `value` (appended: the last one wins)."""
    return without_field(data, field) + (string_field(field, value) if value else b"")


def read_string(data: bytes, field: int) -> str:
    """A top-level string field (its last occurrence), "" when absent."""
    value = ""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, end)
        if key >> 3 == field and key & 7 == _LEN:
            n, pos = _varint(data, pos, end)
            if pos + n > end:
                raise WireError("truncated field")
            value = _text(data, pos, pos + n)
            pos += n
        else:
            pos = _skip(data, pos, end, key & 7)
    return value


def read_bool(data: bytes, field: int = 1) -> bool:
    """A bool field of a small answer (`ServerReadyResponse.ready`, `ModelReadyResponse.ready`)."""
    value = False
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, end)
        if key >> 3 == field and key & 7 == _VARINT:
            v, pos = _varint(data, pos, end)
            value = bool(v)
        else:
            pos = _skip(data, pos, end, key & 7)
    return value


__all__ = [
    "RequestScan",
    "TritonSequence",
    "WireError",
    "read_bool",
    "read_string",
    "scan_request",
    "string_field",
    "with_string_field",
    "without_field",
]
