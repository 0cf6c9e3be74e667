"""Rules answers for gRPC calls: Triton's protobuf messages seen as KServe v2 JSON and back.

Rules files speak KServe v2 JSON (their `json:` predicates read the request's JSON, their
answers are JSON). For a gRPC `ModelInfer` the rules read a JSON view of the request (its
id, model, parameters, and each input's name, datatype and shape, without tensor data), and a
JSON infer answer is encoded as a `ModelInferResponse` with raw output contents, which is what
tritonclient reads. This runs only when the route's primary path failed, so the full protobuf
decode is affordable here and never happens on the request path.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from tritonclient.grpc import service_pb2 as pb

# KServe v2 datatypes with a fixed-size binary form, as struct codes (little-endian).
_STRUCT_CODES = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b",
    "INT16": "h", "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip


class NotAnInferAnswer(ValueError):
    """The rule's JSON answer cannot be a `ModelInferResponse`; says why."""


def request_json(body: bytes) -> bytes:
    """The KServe v2 JSON view of a `ModelInferRequest` that rules' predicates read.

    Raises `ValueError` for bytes that are not such a message.
    """
    try:
        req = pb.ModelInferRequest.FromString(body)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"not a ModelInferRequest: {e}") from None
    view: dict[str, Any] = {
        "id": req.id,
        "model_name": req.model_name,
        "model_version": req.model_version,
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in req.inputs
        ],
    }
    if req.outputs:
        view["outputs"] = [{"name": o.name} for o in req.outputs]
    if req.parameters:
        view["parameters"] = {
            k: getattr(v, v.WhichOneof("parameter_choice") or "bool_param")
            for k, v in req.parameters.items()
        }
    return json.dumps(view).encode()


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def _raw(datatype: str, values: list[Any], name: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in values:
            raw = v.encode() if isinstance(v, str) else json.dumps(v).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    code = _STRUCT_CODES.get(datatype)
    if code is None:
        raise NotAnInferAnswer(f"output '{name}': unknown datatype {datatype!r}")
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except struct.error as e:
        raise NotAnInferAnswer(f"output '{name}': data do not fit {datatype}: {e}") from None


def infer_response(body: bytes, request_id: str) -> bytes:
    """A rule's KServe v2 JSON infer answer as `ModelInferResponse` bytes.

    `request_id` is the id of the request answered (the answer carries it, as Triton's do).
    Raises `NotAnInferAnswer` when the JSON is not an infer answer.
    """
    try:
        data = json.loads(body)
    except ValueError as e:
        raise NotAnInferAnswer(f"not JSON: {e}") from None
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list):
        raise NotAnInferAnswer("no 'outputs' list")
    resp = pb.ModelInferResponse(
        model_name=str(data.get("model_name") or ""),
        model_version=str(data.get("model_version") or ""),
        id=request_id,
    )
    for out in outputs:
        if not isinstance(out, dict):
            raise NotAnInferAnswer("each output must be an object")
        name, datatype, shape = out.get("name"), out.get("datatype"), out.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise NotAnInferAnswer("each output needs a name and a datatype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise NotAnInferAnswer(f"output '{name}': shape must be a list of sizes")
        values: list[Any] = []
        _flatten(out.get("data", []), values)
        if len(values) != math.prod(shape):
            raise NotAnInferAnswer(f"output '{name}': {len(values)} values do not fill {shape}")
        resp.outputs.add(name=name, datatype=datatype, shape=shape)
        resp.raw_output_contents.append(_raw(datatype, values, name))
    return bytes(resp.SerializeToString())


def error_message(body: bytes) -> str:
    """The message of a rule's error answer (Triton's `{"error": "..."}` or any JSON)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return json.dumps(data)[:500]


__all__ = ["NotAnInferAnswer", "error_message", "infer_response", "request_json"]
