"""What one exchange says about the data and the model: features from the bytes, no I/O.

Run by the quality worker on sampled exchanges after their answers were sent, never on
the request path. Each call takes the request body and the buffered answer body (None
for a stream, whose answer is not kept) and returns `Features`: numeric values and
categorical labels by feature name, plus what the shadow comparison and the canary's
output gate need (the predicted class of each row and its score vector, token counts).

Feature names are built from the protocol's own vocabulary and the tensor names the
client sent. Tensor names are client data, so they are cleaned and bounded here
(`clean_name`) and the profile caps how many features a route and backend may have:
whatever a client sends, the metrics' label sets stay bounded.

KServe v2 (JSON, or the binary tensor extension whose JSON header is followed by raw
tensor bytes), per input and output tensor `<io>.<name>.`:
  datatype (categorical), shape (categorical, e.g. `1x4`), elements, nan, inf (numeric),
  value (numeric; at most `MAX_VALUES` evenly spaced values per tensor and exchange).
  Binary tensors give shape, datatype and elements only: their bytes are not decoded.
  A classification-shaped output (a float tensor `[batch, classes]`, 2 <= classes <=
  `MAX_CLASSES`) adds `<name>.class` (argmax per row, categorical) and `<name>.score`
  (the winning score per row, numeric). The first such output whose rows are
  probabilities (non-negative, summing to 1) is the answer's predicted class; without
  one, the first score matrix is.
OpenAI chat completions:
  request.messages, request.prompt_chars, request.max_tokens (numeric), request.stream
  (categorical); from a buffered answer: usage.prompt_tokens, usage.completion_tokens
  (numeric), finish_reason and answer (`text`, `empty` or `refusal`) per choice.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.proxy.edge import CodingError, decoded

# At most this many values of one tensor enter the value distribution per exchange:
# enough for a distribution over many exchanges, cheap whatever the tensor's size.
MAX_VALUES = 32
# A score vector longer than this is not treated as classes (an embedding, an image).
MAX_CLASSES = 1000
# Rows of a batch looked at per exchange (argmax and scores).
MAX_ROWS = 64
# Flat tensors up to this many numbers are read in plain Python (numpy costs more there).
SMALL = 256
# Tensors looked at per request or answer, in order.
MAX_TENSORS = 16
NAME_MAX = 48
# A compressed body is read up to this size once decoded.
DECODE_LIMIT = 16 << 20

NUMERIC_TYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64", "BF16"}
)
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
_NAME_OK = re.compile(r"^[A-Za-z0-9_.:/-]+$")


@dataclass(slots=True)
class Features:
    """What one exchange showed; empty dicts when nothing could be read.

    `primary` names the categorical feature that stands for "what the model answered"
    (the first classification output's class, or the chat finish reason); `rows` holds
    its labels per batch row and `scores` the matching score vectors, for the shadow
    comparison. `problem` says why a body could not be read (counted, not profiled).
    """

    numeric: dict[str, list[float]] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    primary: str | None = None
    rows: list[str] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    tokens: int | None = None
    problem: str | None = None
    primary_is_probability: bool = False

    def add(self, name: str, value: float) -> None:
        self.numeric.setdefault(name, []).append(value)

    def label(self, name: str, value: str) -> None:
        self.categorical.setdefault(name, []).append(value)


def decode_body(coding: str | None, body: bytes) -> bytes:
    """A body with its content codings undone (gzip, deflate), for reading its features.

    A body whose coding cannot be undone (unknown, corrupt, or decoding past
    `DECODE_LIMIT`: a bomb) reads as empty, so it is counted as unreadable, never profiled
    as garbage.
    """
    if not coding:
        return body
    try:
        out = decoded(coding, body, DECODE_LIMIT)
    except CodingError:
        return b""
    return out if out is not None else b""


def clean_name(name: object) -> str:
    """A tensor name fit for a feature name and a metric label, or `_` when it is not."""
    if isinstance(name, str) and 0 < len(name) <= NAME_MAX and _NAME_OK.match(name):
        return name
    return "_"


def extract(protocol: str, request: bytes, response: bytes | None) -> Features:
    """The features of one exchange of a `protocol` route (`kserve-v2` or `openai`).

    Never raises on bad bodies: a body that cannot be read sets `problem` and keeps what
    the other body gave.
    """
    out = Features()
    if protocol == "kserve-v2":
        _kserve(out, request, response)
    elif protocol == "openai":
        _chat(out, request, response)
    return out


# --- KServe v2 -----------------------------------------------------------------------------


def load_json_head(body: bytes) -> tuple[Any, bool]:
    """(the JSON document, whether raw tensor bytes followed it), or raises ValueError.

    A binary-extension body is a JSON header followed by raw bytes. Decoding as Latin-1
    maps each byte to one character, and multi-byte UTF-8 never forms a JSON delimiter,
    so the header's end is found without the `Inference-Header-Content-Length` header.
    """
    try:
        return json.loads(body), False
    except ValueError:
        pass
    except RecursionError:
        raise ValueError("too deeply nested") from None
    text = body.decode("latin-1")
    try:
        doc, end = json.JSONDecoder().raw_decode(text)
    except RecursionError:
        raise ValueError("too deeply nested") from None
    return doc, end < len(text)


def _kserve(out: Features, request: bytes, response: bytes | None) -> None:
    try:
        doc, _ = load_json_head(request)
    except ValueError:
        out.problem = "request_not_json"
        doc = None
    if isinstance(doc, dict):
        _tensors(out, "input", doc.get("inputs"), classify=False)
    elif doc is not None:
        out.problem = "request_not_object"
    if response is None:
        return
    try:
        answer, _ = load_json_head(response)
    except ValueError:
        out.problem = out.problem or "response_not_json"
        return
    if isinstance(answer, dict):
        _tensors(out, "output", answer.get("outputs"), classify=True)
    else:
        out.problem = out.problem or "response_not_object"


def _tensors(out: Features, io: str, tensors: object, *, classify: bool) -> None:
    if not isinstance(tensors, list):
        return
    for tensor in tensors[:MAX_TENSORS]:
        if not isinstance(tensor, dict):
            continue
        prefix = f"{io}.{clean_name(tensor.get('name'))}"
        datatype = tensor.get("datatype")
        datatype = datatype if isinstance(datatype, str) and len(datatype) <= 8 else "?"
        shape = tensor.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            out.label(prefix + ".shape", "invalid")
            continue
        out.label(prefix + ".datatype", datatype)
        out.label(prefix + ".shape", "x".join(str(d) for d in shape) or "scalar")
        count = math.prod(shape)
        out.add(prefix + ".elements", float(count))
        data = tensor.get("data")
        if data is None or datatype not in NUMERIC_TYPES:
            continue  # binary tensor data (or BYTES): shape and type only
        if (
            isinstance(data, list)
            and len(data) <= SMALL
            and all(type(v) is float or type(v) is int for v in data)
        ):
            _small(out, prefix, data, shape, count, datatype, classify)
            continue
        values = _as_array(data)
        if values is None:
            continue
        nan = int(np.isnan(values).sum())
        inf = int(np.isinf(values).sum())
        out.add(prefix + ".nan", float(nan))
        out.add(prefix + ".inf", float(inf))
        n = values.size
        picked = values if n <= MAX_VALUES else values[:: math.ceil(n / MAX_VALUES)]
        if nan or inf:
            picked = picked[np.isfinite(picked)]
        out.numeric.setdefault(prefix + ".value", []).extend(picked.tolist())
        if classify and _class_shaped(datatype, shape) and n == count:
            _classes(out, prefix, values.reshape(shape[0], shape[1]).tolist())


def _class_shaped(datatype: str, shape: list[int]) -> bool:
    return (
        datatype in FLOAT_TYPES
        and len(shape) == 2
        and shape[0] >= 1
        and 2 <= shape[1] <= MAX_CLASSES
    )


def _small(
    out: Features,
    prefix: str,
    data: list[float],
    shape: list[int],
    count: int,
    datatype: str,
    classify: bool,
) -> None:
    """A flat tensor of a few numbers: plain Python, cheaper than numpy at this size."""
    finite = [float(v) for v in data if v - v == 0]  # NaN and infinities give NaN
    nan = sum(1 for v in data if v != v)
    out.add(prefix + ".nan", float(nan))
    out.add(prefix + ".inf", float(len(data) - len(finite) - nan))
    n = len(finite)
    picked = finite if n <= MAX_VALUES else finite[:: math.ceil(n / MAX_VALUES)]
    out.numeric.setdefault(prefix + ".value", []).extend(picked)
    if classify and _class_shaped(datatype, shape) and len(data) == count:
        width = shape[1]
        rows = [[float(v) for v in data[i : i + width]] for i in range(0, count, width)]
        _classes(out, prefix, rows)


def _as_array(data: object) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """The tensor's values flattened as float64, or None when they are not numbers."""
    if not isinstance(data, list):
        return None
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    return arr.ravel()


def _classes(out: Features, prefix: str, rows: list[list[float]]) -> None:
    """Argmax and winning score per row; a probability output is preferred as `primary`."""
    rows = rows[:MAX_ROWS]
    labels = []
    top = []
    probabilities = True
    for row in rows:
        best, score = 0, -math.inf
        for i, v in enumerate(row):
            if v > score:  # NaN never wins
                best, score = i, v
        labels.append(str(best))
        if math.isfinite(score):
            top.append(score)
        if probabilities and (abs(sum(row) - 1.0) > 1e-3 or min(row) < 0.0):
            probabilities = False
    name = prefix + ".class"
    out.categorical.setdefault(name, []).extend(labels)
    out.numeric.setdefault(prefix + ".score", []).extend(top)
    # the first probability output stands for the answer; else the first score matrix
    if out.primary is None or (probabilities and not out.primary_is_probability):
        out.primary = name
        out.primary_is_probability = probabilities
        out.rows = labels
        out.scores = rows


# --- OpenAI chat ---------------------------------------------------------------------------


def _chat(out: Features, request: bytes, response: bytes | None) -> None:
    try:
        doc = json.loads(request)
    except (ValueError, RecursionError):
        out.problem = "request_not_json"
        doc = None
    if isinstance(doc, dict):
        messages = doc.get("messages")
        if isinstance(messages, list):
            out.add("request.messages", float(len(messages)))
            out.add("request.prompt_chars", float(sum(_content_chars(m) for m in messages)))
        limit = doc.get("max_completion_tokens", doc.get("max_tokens"))
        if isinstance(limit, int | float) and not isinstance(limit, bool):
            out.add("request.max_tokens", float(limit))
        out.label("request.stream", "true" if doc.get("stream") is True else "false")
    if response is None:
        return
    try:
        answer = json.loads(response)
    except (ValueError, RecursionError):
        out.problem = out.problem or "response_not_json"
        return
    if not isinstance(answer, dict):
        out.problem = out.problem or "response_not_object"
        return
    usage = answer.get("usage")
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "completion_tokens"):
            v = usage.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                out.add(f"usage.{key}", float(v))
                if key == "completion_tokens":
                    out.tokens = v
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices[:MAX_ROWS]:
        if not isinstance(choice, dict):
            continue
        reason = choice.get("finish_reason")
        label = reason if isinstance(reason, str) and len(reason) <= 32 else "none"
        out.label("finish_reason", label)
        out.rows.append(label)
        message = choice.get("message")
        kind = "empty"
        if isinstance(message, dict):
            if isinstance(message.get("refusal"), str) and message["refusal"]:
                kind = "refusal"
            elif _content_chars(message) > 0 or message.get("tool_calls"):
                kind = "text"
        out.label("answer", kind)
    if out.rows:
        out.primary = "finish_reason"


def _content_chars(message: object) -> int:
    if not isinstance(message, dict):
        return 0
    content = message.get("content")
    if isinstance(content, str):
        return len(content.strip())
    if isinstance(content, list):
        return sum(
            len(p["text"].strip())
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return 0
