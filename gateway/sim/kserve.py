"""KServe v2 (Triton) inference, simulated: request bytes in, answer out, no I/O.

The shapes follow Triton's HTTP/REST API: a JSON request whose input tensors
carry their data inline, or (the binary tensor extension, tritonclient's
default) a JSON header of `Inference-Header-Content-Length` bytes followed by
the raw little-endian tensor bytes. The answer is always JSON, which
tritonclient parses whatever it asked for. The model is a fixed, deterministic
function: OUTPUT0 (FP32) = 2 x the first input, same shape.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

OUTPUT_NAME = "OUTPUT0"
INPUT_NAME = "INPUT0"

# KServe v2 datatypes with a fixed-size binary form, as struct codes (little-endian).
_STRUCT_CODES = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}


class InferError(Exception):
    """The request cannot be served; `status` and `message` are what Triton would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_body(content_encoding: str | None, body: bytes) -> bytes:
    """A request body with its content coding undone, as Triton accepts gzip and deflate."""
    coding = (content_encoding or "identity").strip().lower()
    try:
        if coding == "gzip":
            return zlib.decompress(body, 31)
        if coding == "deflate":
            return zlib.decompress(body)
    except zlib.error as e:
        raise InferError(400, f"failed to decompress the request body: {e}") from None
    if coding != "identity":
        raise InferError(400, f"unsupported Content-Encoding '{coding}'")
    return body


def model_metadata(model: str) -> dict[str, Any]:
    """`GET /v2/models/{model}`: what tritonclient's get_model_metadata expects."""
    return {
        "name": model,
        "versions": ["1"],
        "platform": "python",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, -1]}],
    }


def parse_request(body: bytes, header_length: str | None) -> dict[str, Any]:
    """The JSON part of an infer request, with each binary input's data decoded inline.

    Raises InferError: 500 for unparsable JSON (as Triton does — a gateway must
    not read that as a sick backend), 400 for a well-formed but wrong request.
    """
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InferError(
                400, f"invalid Inference-Header-Content-Length: {header_length!r}"
            ) from None
        if not 0 <= size <= len(body):
            raise InferError(
                400, f"Inference-Header-Content-Length {size} exceeds the body ({len(body)} bytes)"
            )
        body, binary = body[:size], body[size:]
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InferError(500, f"failed to parse the request JSON buffer: {e}") from None
    if not isinstance(request, dict):
        raise InferError(400, "failed to parse the request JSON buffer: expected an object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferError(400, "expected at least one input in the 'inputs' array")
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise InferError(400, "each input must be an object")
        params = tensor.get("parameters")
        data_size: object = params.get("binary_data_size") if isinstance(params, dict) else None
        if data_size is None:
            continue
        if not isinstance(data_size, int) or data_size < 0 or offset + data_size > len(binary):
            raise InferError(
                400,
                f"input '{tensor.get('name')}': binary_data_size {data_size!r} exceeds the body",
            )
        tensor["data"] = _decode(tensor, binary[offset : offset + data_size])
        offset += data_size
    return request


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InferError(
            400, f"input '{tensor.get('name')}': shape must be a list of sizes, got {shape!r}"
        )
    return shape


def _decode(tensor: dict[str, Any], raw: bytes) -> list[Any]:
    datatype = tensor.get("datatype")
    code = _STRUCT_CODES.get(datatype) if isinstance(datatype, str) else None
    if code is None:
        raise InferError(400, f"input '{tensor.get('name')}': unsupported datatype {datatype!r}")
    count = math.prod(_shape(tensor))
    if count * struct.calcsize(code) != len(raw):
        raise InferError(
            400,
            f"input '{tensor.get('name')}': {len(raw)} bytes do not hold {count} {datatype}",
        )
    return list(struct.unpack(f"<{count}{code}", raw))


def _flatten(data: Any, out: list[float], name: object) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out, name)
    elif isinstance(data, int | float):  # bool included: Triton's BOOL is 0/1
        out.append(float(data))
    else:
        raise InferError(400, f"input '{name}': expected numbers, got {data!r}")


def infer(request: dict[str, Any], model: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Answer a parsed infer request: OUTPUT0 = 2 x the first input, as FP32.

    Raises InferError(400) for what Triton would refuse: missing data, data not
    matching its shape, a requested output that does not exist (`extra` names outputs
    the caller adds besides OUTPUT0).
    """
    first = request["inputs"][0]
    name = first.get("name")
    shape = _shape(first)
    if "data" not in first:
        raise InferError(400, f"input '{name}': no data (neither 'data' nor binary_data_size)")
    data = first["data"]
    try:
        # The common case, flat numbers, in one pass; x * 2.0 raises TypeError for
        # anything else (a nested list, a string, null), which the slow path explains.
        doubled = [x * 2.0 for x in data] if isinstance(data, list) else None
    except TypeError:
        doubled = None
    if doubled is None:
        values: list[float] = []
        _flatten(data, values, name)
        doubled = [v * 2.0 for v in values]
    if len(doubled) != math.prod(shape):
        raise InferError(400, f"input '{name}': {len(doubled)} values do not fill shape {shape}")
    wanted = request.get("outputs")
    if isinstance(wanted, list):
        for out in wanted:
            out_name = out.get("name") if isinstance(out, dict) else out
            if out_name != OUTPUT_NAME and out_name not in extra:
                raise InferError(
                    400, f"unexpected inference output '{out_name}' for model '{model}'"
                )
    answer: dict[str, Any] = {}
    if "id" in request:
        answer["id"] = request["id"]
    answer["model_name"] = model
    answer["model_version"] = "1"
    answer["outputs"] = [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": shape, "data": doubled}]
    return answer
