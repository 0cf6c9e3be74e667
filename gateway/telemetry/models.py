"""The data and model layers of the metrics: what clients send and what models answer.

Read at an exchange's end from the bodies the gateway already holds, with a few anchored
searches rather than a JSON parse (as the span attributes are): KServe v2 tensors' datatypes
and shapes on both sides, and, on OpenAI routes, the usage the backend reported (prompt and
completion tokens) and each choice's finish reason. Bodies larger than `MAX_SCANNED` and
streamed answers are not read (a stream's usage is not in one body); gRPC bodies are
protobuf and are not read either.

The `model` label comes from the request (the KServe path, the OpenAI body's "model"), so a
client could invent names without end: a `LabelGuard` keeps the first
`telemetry.max_label_values` models and folds later ones into `other`, counted in
`tailguard_metric_label_folds_total{label="model"}`. Shapes are bounded the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.policy.compile import model_from_path
from gateway.proxy.edge import CodingError, decoded
from gateway.telemetry.catalog import FINISH_REASONS, TENSOR_DATATYPES, LabelGuard, Metrics
from gateway.telemetry.config import DEFAULT_MAX_LABEL_VALUES, OTHER_LABEL
from gateway.telemetry.hot import CounterCell
from gateway.telemetry.tracing import _FINISH, _INPUT_TOKENS, _MODEL, _OUTPUT_TOKENS, _text

if TYPE_CHECKING:
    from gateway.policy.compile import RouteRuntime
    from gateway.proxy.exchange import Exchange

# the largest body (or JSON part of a binary-tensor body) read for these metrics
MAX_SCANNED = 64 * 1024
# the model label when a request does not say
UNKNOWN_MODEL = "unknown"
# tensor layouts whose counters are remembered (forgotten all at once past this)
MAX_LAYOUTS = 1024

_TENSOR_FIELD = re.compile(rb'"(shape|datatype)"\s*:\s*(\[[-\d\s,]*\]|"[A-Z0-9]{1,8}")')


class ModelMetrics:
    """Records the data and model layers of one ended exchange; `set_limit` on a reload."""

    __slots__ = ("_cells", "_m", "models", "shapes")

    def __init__(self, metrics: Metrics, limit: int = DEFAULT_MAX_LABEL_VALUES) -> None:
        self._m = metrics
        self._cells: dict[tuple[object, ...], list[CounterCell]] = {}
        self.models = LabelGuard(metrics, "model", limit)
        self.shapes = LabelGuard(metrics, "shape", limit)

    def set_limit(self, limit: int) -> None:
        self.models.set_limit(limit)
        self.shapes.set_limit(limit)

    def observe(self, ex: Exchange, route: RouteRuntime) -> None:
        """One ended exchange of a KServe v2 or OpenAI route (the caller checks the protocol)."""
        req = ex.request
        if req.grpc is not None:
            return
        up = ex.response
        answer = up.body if up is not None and ex.status < 300 else None
        if route.protocol == "openai":
            self._openai(
                route.name,
                _plain(req.body, req.headers),
                _plain(answer, up.headers) if answer is not None and up is not None else None,
            )
            return
        model = model_from_path(req.path)
        if model is None:
            return
        label = self.models(model)
        self._tensors(route.name, label, "input", _json_part(req.body, req.headers))
        if answer is not None and up is not None:
            self._tensors(route.name, label, "output", _json_part(answer, up.headers))

    def _openai(self, route: str, body: bytes | None, answer: bytes | None) -> None:
        found = _MODEL.search(body) if body else None
        model = self.models(_text(found.group(1)) if found is not None else UNKNOWN_MODEL)
        if not answer:
            return
        m = self._m
        usage = _INPUT_TOKENS.search(answer)
        if usage is not None:
            tokens = int(usage.group(1))
            m.child(m.model_tokens, route, model, "input").inc(tokens)
            m.child(m.prompt_tokens, route, model).observe(tokens)
        usage = _OUTPUT_TOKENS.search(answer)
        if usage is not None:
            m.child(m.model_tokens, route, model, "output").inc(int(usage.group(1)))
        for raw in _FINISH.findall(answer):
            reason = _text(raw)
            reason = reason if reason in FINISH_REASONS else OTHER_LABEL
            m.child(m.finish_reasons, route, model, reason).inc()

    def _tensors(self, route: str, model: str, side: str, part: bytes | None) -> None:
        if not part:
            return
        fields = _TENSOR_FIELD.findall(part)
        if not fields:
            return
        # a model's requests mostly repeat a few tensor layouts: their cells are kept by what
        # the body said, so a repeat costs one search, one lookup and an add per tensor
        key = (route, model, side, *fields)
        cells = self._cells.get(key)
        if cells is None:
            made = self._tensor_cells(route, model, side, fields)
            if made is None:
                return
            cells, folded = made
            if not folded:  # a folded shape is counted as a fold each time it comes
                if len(self._cells) >= MAX_LAYOUTS:
                    self._cells.clear()
                self._cells[key] = cells
        for cell in cells:
            cell.inc()

    def _tensor_cells(
        self, route: str, model: str, side: str, fields: list[tuple[bytes, bytes]]
    ) -> tuple[list[CounterCell], bool] | None:
        """The counters of a body's tensors and whether a shape was folded; None when the
        body's shapes and datatypes do not pair up."""
        shapes: list[str] = []
        datatypes: list[str] = []
        for field, value in fields:
            if field == b"shape":
                dims = [d.strip() for d in value[1:-1].split(b",") if d.strip()]
                shapes.append(b"x".join(dims).decode("ascii") or "scalar")
            else:
                datatype = value[1:-1].decode("ascii")
                datatypes.append(datatype if datatype in TENSOR_DATATYPES else OTHER_LABEL)
        m = self._m
        # each tensor object has one of each; a body that does not pair them is left out
        if len(shapes) != len(datatypes):
            return None
        cells = []
        folded = False
        for shape, datatype in zip(shapes, datatypes, strict=True):
            label = self.shapes(shape)
            folded = folded or label is OTHER_LABEL
            cells.append(m.child(m.tensors, route, model, side, datatype, label))
        return cells, folded


def _plain(body: bytes | None, headers: Mapping[str, str]) -> bytes | None:
    """The body with its content codings undone (Triton gzips for clients that accept it),
    or None when there is none, it is too large to read here, or it does not decode."""
    if not body or len(body) > MAX_SCANNED:
        return None
    try:
        return decoded(headers.get("content-encoding"), body, MAX_SCANNED)
    except CodingError:
        return None


def _json_part(body: bytes | None, headers: Mapping[str, str]) -> bytes | None:
    """The JSON of a KServe body (its first Inference-Header-Content-Length bytes when the
    tensors are binary), or None when there is none or it is too large to read here."""
    n = headers.get("inference-header-content-length")
    if n is None:
        return _plain(body, headers)
    if not body or headers.get("content-encoding"):
        return None  # binary tensors compressed: the JSON part's length is of the plain body
    if n is not None:
        n = n.strip()
        if n.isascii() and n.isdigit():
            body = body[: int(n)]
    return body if len(body) <= MAX_SCANNED else None


__all__ = ["MAX_SCANNED", "UNKNOWN_MODEL", "ModelMetrics"]
