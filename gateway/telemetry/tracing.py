"""OpenTelemetry tracing of the request path, made by hand and cheaply.

When the policy has no `telemetry.tracing` the gateway makes no `Tracing` at all and a
request pays one `is None` test at the edge and one per hook (`ex.trace is None`). When it
has one, every request gets a `RequestTrace`: a server span continued from the client's
W3C `traceparent`/`tracestate`, a client span per upstream attempt (its context injected
into the attempt's headers), spans for cache lookups and fallback steps, and admission
and endpoint-pick decisions as events. Sampling is parent-based with the policy's ratio,
so a client's sampled trace is always followed and new traces are sampled at the ratio.

Spans are made by hand (`HandSpan`): ids from the injected random source, attributes in a
plain dict, no per-attribute validation, no context objects. Only a sampled span, when it
ends, goes to the SDK's span processor (a batch processor feeding the OTLP exporter, whose
thread does the encoding). Through the SDK's own tracer the same request cost several times
more (see loadtests/tracing_micro.py). The provider's resource and exporters are the SDK's;
nothing is registered in OpenTelemetry's globals.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
import time
from collections.abc import Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway import __version__
from gateway.telemetry.config import TracingConfig

if TYPE_CHECKING:
    from gateway.policy.compile import BackendRuntime, EndpointSpec
    from gateway.proxy.exchange import Exchange
    from gateway.resilience.outcome import Outcome

# OpenAI paths and the GenAI operation each one is
GENAI_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
# bodies larger than this are not parsed for span attributes (the span is still made)
MAX_PARSED_BODY = 256 * 1024

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_ID64 = (1 << 64) - 1
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C traceparent, or None when it is invalid."""
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(parent, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def sampler_from_env(environ: Mapping[str, str], ratio: float) -> tuple[bool, float]:
    """(parent-based, ratio) from OTEL_TRACES_SAMPLER/_ARG when set, else the policy's ratio."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return True, ratio
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG")
    try:
        env_ratio = min(max(float(arg), 0.0), 1.0) if arg else 1.0
    except ValueError:
        env_ratio = 1.0
    parent_based = name.startswith("parentbased_")
    kind = name.removeprefix("parentbased_")
    if kind == "always_on":
        return parent_based, 1.0
    if kind == "always_off":
        return parent_based, 0.0
    if kind == "traceidratio":
        return parent_based, env_ratio
    return True, ratio


def make_exporter(config: TracingConfig) -> SpanExporter:
    """The OTLP exporter the policy names; unset fields fall back to the OTEL_* environment."""
    headers = dict(config.headers) or None
    if config.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        endpoint = config.endpoint
        if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint, headers=headers)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    endpoint = config.endpoint
    insecure = None if endpoint is None else endpoint.startswith("http://")
    return GrpcExporter(endpoint=endpoint, headers=headers, insecure=insecure)


class HandSpan(ReadableSpan):
    """A span made on the request path: a few slots while it runs, a `ReadableSpan` once ended.

    Unsampled spans keep their ids (for propagation) and record nothing.
    """

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        kind: SpanKind,
        trace_id: int,
        parent_id: int | None,
        sampled: bool,
        attributes: dict[str, Any] | None,
        *,
        remote_parent: bool = False,
        tracestate: TraceState | None = None,
    ) -> None:
        # ReadableSpan's fields, set directly (its constructor validates nothing either)
        self._name = name
        self._kind = kind
        self.attrs: dict[str, Any] | None = attributes if sampled else None
        self._attributes = None
        self._links = ()
        self._events: list[Any] = []
        self._status = _UNSET
        self._start_time = time.time_ns() if sampled else 0
        self._end_time = None
        self._resource = tracing.resource
        self._instrumentation_scope = tracing.scope
        self._instrumentation_info = None
        self._context = None
        self._parent = None
        self.tracing = tracing
        self.trace_id = trace_id
        self.span_id = tracing.new_id()
        self.parent_id = parent_id
        self.sampled = sampled
        self.remote_parent = remote_parent
        self.tracestate = tracestate
        # attributes worked out from the ended exchange when the exporter reads the span, on
        # its own thread (the exchange no longer changes once it has ended)
        self.deferred: Callable[[HandSpan], None] | None = None

    def is_recording(self) -> bool:
        return self.sampled

    def set_attribute(self, key: str, value: Any) -> None:
        if self.attrs is not None:
            self.attrs[key] = value

    def add_event(self, name: str, attributes: dict[str, Any]) -> None:
        if self.sampled:
            self._events.append((name, attributes, time.time_ns()))

    def set_error(self) -> None:
        self._status = _ERROR

    def update_name(self, name: str) -> None:
        self._name = name

    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"

    def end(self) -> None:
        if not self.sampled or self._end_time is not None:
            return
        self._end_time = time.time_ns()
        self._attributes = self.attrs
        self._context = SpanContext(self.trace_id, self.span_id, False, _SAMPLED, self.tracestate)
        self.tracing.processor.on_end(self)

    def _settle(self) -> None:
        fill = self.deferred
        if fill is not None:
            self.deferred = None
            fill(self)
            self._attributes = self.attrs

    @property
    def name(self) -> str:
        self._settle()
        return self._name

    @property
    def attributes(self) -> Mapping[str, Any]:
        self._settle()
        return MappingProxyType(self._attributes or {})

    @property
    def status(self) -> Status:
        self._settle()
        return self._status

    @property
    def parent(self) -> SpanContext | None:
        # made when the exporter asks, on its own thread
        if self.parent_id is None:
            return None
        return SpanContext(
            self.trace_id, self.parent_id, self.remote_parent, _SAMPLED, self.tracestate
        )

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(Event(n, {k: _attr(v) for k, v in a.items()}, t) for n, a, t in self._events)


class Tracing:
    """The gateway's tracer: starts a request's trace at the edge and ends it at its end.

    `processor` replaces the batch exporter (tests pass a simple processor with an
    in-memory exporter); `rng` makes the ids and sampling draws. The caller `shutdown`s it
    at stop, which flushes queued spans.
    """

    def __init__(
        self,
        config: TracingConfig,
        *,
        processor: SpanProcessor | None = None,
        environ: Mapping[str, str] = os.environ,
        rng: random.Random | None = None,
    ) -> None:
        attributes: dict[str, Any] = {SERVICE_VERSION: __version__}
        if not environ.get("OTEL_SERVICE_NAME"):
            attributes[SERVICE_NAME] = config.service_name
        self.resource = Resource.create(attributes)
        self.scope = InstrumentationScope("tailguard", __version__)
        self.processor = processor or BatchSpanProcessor(make_exporter(config))
        self._parent_based, ratio = sampler_from_env(environ, config.sample_ratio)
        # TraceIdRatioBased's rule: sampled when the trace id's low 64 bits are below this
        self._bound = round(ratio * (_ID64 + 1))
        self._rng = rng or random.Random(int.from_bytes(os.urandom(16), "big"))
        self.new_id = self._new_id

    def _new_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def start(self, ex: Exchange) -> None:
        """The request's server span, continuing the client's trace when it sent one."""
        req = ex.request
        headers = req.headers
        value = headers.get("traceparent")
        parent = parse_traceparent(value) if value is not None else None
        if parent is not None:
            trace_id, parent_id, parent_sampled = parent
            sampled = parent_sampled if self._parent_based else (trace_id & _ID64) < self._bound
            state = headers.get("tracestate") if sampled else None
            tracestate = TraceState.from_header([state]) if state else None
        else:
            trace_id = self._rng.getrandbits(128) or 1
            parent_id, tracestate = None, None
            sampled = (trace_id & _ID64) < self._bound
        attributes = (
            {
                "http.request.method": req.method,
                "url.path": req.path,
                "url.scheme": req.scheme,
                "client.address": req.client_ip,
                "tailguard.request_id": req.request_id,
            }
            if sampled
            else None
        )
        span = HandSpan(
            self, req.method, SpanKind.SERVER, trace_id, parent_id, sampled, attributes,
            remote_parent=parent is not None, tracestate=tracestate,
        )  # fmt: skip
        ex.trace = RequestTrace(self, span)

    def child(
        self, parent: HandSpan, name: str, kind: SpanKind, attributes: dict[str, Any] | None
    ) -> HandSpan:
        return HandSpan(
            self, name, kind, parent.trace_id, parent.span_id, parent.sampled, attributes,
            tracestate=parent.tracestate,
        )  # fmt: skip

    def end(self, ex: Exchange) -> None:
        """Finish the server span with what the exchange did (called once, at its end)."""
        trace = ex.trace
        if trace is None or trace.span is None:
            return
        span = trace.span
        trace.close_open()
        if span.sampled:
            # a copy of what the attributes need, not the exchange: the exchange holds the
            # trace, which holds this span, and that cycle would wait for the cyclic GC
            span.deferred = functools.partial(_server_attributes, Ended(ex))
        span.end()

    async def shutdown(self) -> None:
        """Flush queued spans (bounded by the exporter's timeout) and stop the exporter."""
        await asyncio.get_running_loop().run_in_executor(None, self.processor.shutdown)


class RequestTrace:
    """One request's spans, and its decision trace when the caller asked for one.

    Either part may be absent: `span` None when tracing is off, `decisions` None when no
    decision trace was asked for. Hooks on the request path call it only when
    `ex.trace is not None`.
    """

    __slots__ = ("_open", "_parents", "_tracing", "decisions", "inflight", "span")

    def __init__(self, tracing: Tracing | None, span: HandSpan | None) -> None:
        self._tracing = tracing
        self.span = span
        self.decisions: list[dict[str, Any]] | None = None
        self.inflight = 0
        self._open: dict[int, HandSpan] = {}
        # the span new children hang from: the server span, or an open fallback step
        self._parents: list[HandSpan] = [span] if span is not None else []

    @property
    def trace_id(self) -> str | None:
        return f"{self.span.trace_id:032x}" if self.span is not None else None

    @property
    def exemplar(self) -> str | None:
        """The trace id for latency exemplars: only a sampled trace, which the backend has."""
        span = self.span
        return f"{span.trace_id:032x}" if span is not None and span.sampled else None

    def note(self, decision: str, /, **detail: Any) -> None:
        """A decision, for the decision trace (when asked) and as an event on the server span."""
        if self.decisions is not None:
            self.decisions.append({"decision": decision, **detail})
        span = self.span
        if span is not None and span.sampled:
            span.add_event(decision, {k: v for k, v in detail.items() if v is not None})

    # --- child spans ---------------------------------------------------------------------

    def child(self, name: str, **attributes: Any) -> HandSpan | None:
        """Open a step span (a fallback step, a cache lookup); `close_child` it when done."""
        tracing = self._tracing
        if tracing is None or not self._parents:
            return None
        span = tracing.child(self._parents[-1], name, SpanKind.INTERNAL, attributes)
        self._parents.append(span)
        return span

    def close_child(self, span: HandSpan | None, **attributes: Any) -> None:
        if span is None:
            return
        if len(self._parents) > 1:
            self._parents.pop()
        if span.sampled:
            for k, v in attributes.items():
                if v is not None:
                    span.set_attribute(k, _attr(v))
        span.end()

    def attempt_start(
        self,
        backend: BackendRuntime,
        spec: EndpointSpec,
        number: int,
        headers: MutableMapping[str, str],
        now: float,
    ) -> HandSpan | None:
        """An attempt begins: its span (context injected upstream) and the pick's decision.

        An attempt started while another is in flight is a hedge; a later one a retry.
        """
        kind = "hedge" if self.inflight else ("retry" if number > 1 else "first")
        self.inflight += 1
        if self.decisions is not None or (self.span is not None and self.span.sampled):
            self.note(
                "attempt",
                number=number,
                kind=kind,
                backend=backend.name,
                endpoint=spec.url,
                region=spec.region,
                candidates=[
                    {
                        "endpoint": s.spec.url,
                        "region": s.spec.region,
                        "breaker": s.breaker.state(now).name.lower() if s.breaker else "none",
                        "outstanding": s.outstanding,
                    }
                    for s in backend.states
                ],
            )
        tracing = self._tracing
        if tracing is None or not self._parents:
            return None
        parent = self._parents[-1]
        span = tracing.child(
            parent,
            f"attempt {backend.name}",
            SpanKind.CLIENT,
            {
                "http.request.method": "POST",
                "url.full": spec.url,
                "server.address": spec.url.split("://", 1)[-1].split("/", 1)[0],
                "tailguard.backend": backend.name,
                "tailguard.endpoint": spec.url,
                "tailguard.region": spec.region,
                "tailguard.attempt.number": number,
                "tailguard.attempt.kind": kind,
            }
            if parent.sampled
            else None,
        )
        headers["traceparent"] = span.traceparent()
        return span

    def attempt_end(
        self,
        span: HandSpan | None,
        index: int,
        outcome: Outcome,
        status: int | None,
        *,
        keep: bool,
    ) -> None:
        """An attempt ended; `keep` leaves an acceptable one open until `settle` names the winner."""
        self.inflight -= 1
        if self.decisions is not None:
            self.decisions.append(
                {
                    "decision": "attempt_end",
                    "index": index,
                    "outcome": outcome.value,
                    "status": status,
                }
            )
        if span is None:
            return
        attrs = span.attrs
        if attrs is not None:
            attrs["tailguard.attempt.outcome"] = outcome.value
            if status is not None:
                attrs["http.response.status_code"] = status
            if outcome.is_failure:
                span.set_error()
                attrs["error.type"] = outcome.value
        if keep:
            self._open[index] = span
            return
        if attrs is not None:
            attrs["tailguard.attempt.winner"] = False
            if outcome.value == "cancelled":
                attrs["tailguard.attempt.cancelled"] = True
        span.end()

    def settle(self, winner: int | None) -> None:
        """The run chose its answer: end the attempts kept open, marking the winner."""
        if self.decisions is not None:
            self.decisions.append({"decision": "answer", "winner_index": winner})
        for index, span in self._open.items():
            if span.sampled:
                span.set_attribute("tailguard.attempt.winner", index == winner)
            span.end()
        self._open.clear()

    def close_open(self) -> None:
        """End whatever is still open when the request ends (an abandoned run)."""
        if self._open:
            self.settle(None)
        while len(self._parents) > 1:
            self._parents.pop()


def _attr(value: Any) -> Any:
    """A span attribute value: scalars as they are, anything else as compact JSON."""
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


class Ended:
    """What the server span's attributes are made from, copied from an ended exchange."""

    __slots__ = (
        "answer_body", "attempts", "backend", "body", "endpoint", "error_code", "fallback",
        "hedged", "method", "path", "route", "status", "stream_outcome",
    )  # fmt: skip

    def __init__(self, ex: Exchange) -> None:
        req = ex.request
        self.method, self.path, self.body = req.method, req.path, req.body
        self.route, self.status, self.answer_body = ex.route, ex.status, ex.answer_body
        self.backend = ex.backend.name if ex.backend is not None else None
        self.endpoint, self.attempts, self.hedged = ex.endpoint, ex.attempts, ex.hedged
        self.fallback, self.error_code = ex.fallback, ex.error_code
        self.stream_outcome = ex.stream_outcome


def _server_attributes(ex: Ended, span: HandSpan) -> None:
    route = ex.route
    status = ex.status
    method = ex.method
    span.update_name(f"{method} {route.name}" if route is not None else method)
    span.set_attribute("http.response.status_code", status)
    if route is not None:
        span.set_attribute("http.route", route.name)
        span.set_attribute("tailguard.route", route.name)
    if ex.backend is not None:
        span.set_attribute("tailguard.backend", ex.backend)
    if ex.endpoint is not None:
        span.set_attribute("tailguard.endpoint", ex.endpoint)
    span.set_attribute("tailguard.attempts", ex.attempts)
    span.set_attribute("tailguard.hedged", ex.hedged)
    if ex.fallback is not None:
        span.set_attribute("tailguard.fallback", ex.fallback)
    error = ex.error_code
    if error is None and ex.stream_outcome is not None and ex.stream_outcome.is_failure:
        error = ex.stream_outcome.value
    if error is None and status >= 500:
        error = str(status)
    if error is not None:
        span.set_attribute("error.type", error)
        if status >= 500 or status == 499 or ex.stream_outcome is not None:
            span.set_error()
    if route is None:
        return
    if route.protocol == "openai":
        _genai_attributes(ex, span)
    elif route.protocol == "kserve-v2":
        from gateway.policy.compile import model_from_path

        model = model_from_path(ex.path)
        if model is not None:
            span.set_attribute("gen_ai.request.model", model)


def _genai_attributes(ex: Ended, span: HandSpan) -> None:
    """GenAI semantic conventions from the buffered request and answer bodies.

    Read with a few anchored searches rather than a JSON parse (a parse of both bodies was
    most of a traced request's cost): the fields are flat, and a body that does not have
    them simply gives no attribute.
    """
    attrs = span.attrs
    if attrs is None:
        return
    op = GENAI_OPERATIONS.get(ex.path)
    if op is not None:
        attrs["gen_ai.operation.name"] = op
    attrs["gen_ai.provider.name"] = "openai"
    body = ex.body
    if body and len(body) <= MAX_PARSED_BODY:
        m = _MODEL.search(body)
        if m is not None:
            attrs["gen_ai.request.model"] = _text(m.group(1))
    answer = ex.answer_body
    if not answer or len(answer) > MAX_PARSED_BODY:
        return
    m = _MODEL.search(answer)
    if m is not None:
        attrs["gen_ai.response.model"] = _text(m.group(1))
    m = _ID.search(answer)
    if m is not None:
        attrs["gen_ai.response.id"] = _text(m.group(1))
    m = _INPUT_TOKENS.search(answer)
    if m is not None:
        attrs["gen_ai.usage.input_tokens"] = int(m.group(1))
    m = _OUTPUT_TOKENS.search(answer)
    if m is not None:
        attrs["gen_ai.usage.output_tokens"] = int(m.group(1))
    reasons = _FINISH.findall(answer)
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = [_text(r) for r in reasons]


_STRING = rb'"((?:[^"\\]|\\.)*)"'
_MODEL = re.compile(rb'"model"\s*:\s*' + _STRING)
_ID = re.compile(rb'^\s*\{\s*"id"\s*:\s*' + _STRING)
_INPUT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,12})')
_OUTPUT_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,12})')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*' + _STRING)


def _text(raw: bytes) -> str:
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "replace")
    return value if isinstance(value, str) else raw.decode("utf-8", "replace")


__all__ = ["GENAI_OPERATIONS", "RequestTrace", "Tracing", "make_exporter"]
