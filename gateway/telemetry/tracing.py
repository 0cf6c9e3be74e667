"""OpenTelemetry tracing of the request path, made by hand and cheaply.

When the policy has no `telemetry.tracing` the gateway makes no `Tracing` at all and a
request pays one `is None` test at the edge and one per hook (`ex.trace is None`). When it
has one, every request gets a `RequestTrace`: a server span continued from the client's
W3C `traceparent`/`tracestate`, a client span per upstream attempt (its context injected
into the attempt's headers), spans for cache lookups and fallback steps, and admission
and endpoint-pick decisions as events. Sampling is parent-based with the policy's ratio,
so a client's sampled trace is always followed and new traces are sampled at the ratio.

The tracer provider belongs to the gateway object, never to OpenTelemetry's globals.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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


class Tracing:
    """The gateway's tracer: starts a request's trace at the edge and ends it at its end.

    `processor` replaces the batch exporter (tests pass a simple processor with an
    in-memory exporter). The caller `shutdown`s it at stop, which flushes queued spans.
    """

    def __init__(
        self,
        config: TracingConfig,
        *,
        processor: SpanProcessor | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        attributes: dict[str, Any] = {SERVICE_VERSION: __version__}
        if not environ.get("OTEL_SERVICE_NAME"):
            attributes[SERVICE_NAME] = config.service_name
        # OTEL_TRACES_SAMPLER, when set, chooses the sampler instead of the policy's ratio
        sampler = (
            None
            if environ.get("OTEL_TRACES_SAMPLER")
            else ParentBased(TraceIdRatioBased(config.sample_ratio))
        )
        self.provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
        self.provider.add_span_processor(processor or BatchSpanProcessor(make_exporter(config)))
        self._tracer = self.provider.get_tracer("tailguard", __version__)
        self._propagator = TraceContextTextMapPropagator()

    def start(self, ex: Exchange) -> None:
        """The request's server span, continuing the client's trace when it sent one."""
        req = ex.request
        headers = req.headers
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        span = self._tracer.start_span(
            req.method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": req.method,
                "url.path": req.path,
                "url.scheme": req.scheme,
                "client.address": req.client_ip,
                "tailguard.request_id": req.request_id,
            },
        )
        ex.trace = RequestTrace(self, span)

    def end(self, ex: Exchange) -> None:
        """Finish the server span with what the exchange did (called once, at its end)."""
        trace = ex.trace
        if trace is None or trace.span is None:
            return
        span = trace.span
        trace.close_open()
        if span.is_recording():
            _server_attributes(ex, span)
        span.end()

    def inject(self, span: Span, headers: MutableMapping[str, str]) -> None:
        self._propagator.inject(headers, context=set_span_in_context(span))

    async def shutdown(self) -> None:
        """Flush queued spans (bounded by the exporter's timeout) and stop the exporter."""
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.provider.shutdown)


class RequestTrace:
    """One request's spans, and its decision trace when the caller asked for one.

    Either part may be absent: `span` None when tracing is off, `decisions` None when no
    decision trace was asked for. Hooks on the request path call it only when
    `ex.trace is not None`.
    """

    __slots__ = ("_open", "_parents", "_tracing", "decisions", "inflight", "span")

    def __init__(self, tracing: Tracing | None, span: Span | None) -> None:
        self._tracing = tracing
        self.span = span
        self.decisions: list[dict[str, Any]] | None = None
        self.inflight = 0
        self._open: dict[int, Span] = {}
        # the span new children hang from: the server span, or an open fallback step
        self._parents: list[Context] = [set_span_in_context(span)] if span is not None else []

    @property
    def trace_id(self) -> str | None:
        if self.span is None:
            return None
        ctx = self.span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.trace_id else None

    def note(self, decision: str, /, **detail: Any) -> None:
        """A decision, for the decision trace (when asked) and as an event on the server span."""
        if self.decisions is not None:
            self.decisions.append({"decision": decision, **detail})
        span = self.span
        if span is not None and span.is_recording():
            span.add_event(decision, {k: _attr(v) for k, v in detail.items() if v is not None})

    # --- child spans ---------------------------------------------------------------------

    def child(self, name: str, **attributes: Any) -> Span | None:
        """Open a step span (a fallback step, a cache lookup); `close_child` it when done."""
        tracing = self._tracing
        if tracing is None or not self._parents:
            return None
        span = tracing._tracer.start_span(
            name, context=self._parents[-1], kind=SpanKind.INTERNAL, attributes=attributes
        )
        self._parents.append(set_span_in_context(span))
        return span

    def close_child(self, span: Span | None, **attributes: Any) -> None:
        if span is None:
            return
        if len(self._parents) > 1:
            self._parents.pop()
        if span.is_recording():
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
    ) -> Span | None:
        """An attempt begins: its span (context injected upstream) and the pick's decision.

        An attempt started while another is in flight is a hedge; a later one a retry.
        """
        kind = "hedge" if self.inflight else ("retry" if number > 1 else "first")
        self.inflight += 1
        if self.decisions is not None or (self.span is not None and self.span.is_recording()):
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
        span = tracing._tracer.start_span(
            f"attempt {backend.name}",
            context=self._parents[-1],
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": spec.url,
                "server.address": spec.url.split("://", 1)[-1].split("/", 1)[0],
                "tailguard.backend": backend.name,
                "tailguard.endpoint": spec.url,
                "tailguard.region": spec.region,
                "tailguard.attempt.number": number,
                "tailguard.attempt.kind": kind,
            },
        )
        tracing.inject(span, headers)
        return span

    def attempt_end(
        self,
        span: Span | None,
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
        if span.is_recording():
            span.set_attribute("tailguard.attempt.outcome", outcome.value)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if outcome.is_failure:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", outcome.value)
        if keep:
            self._open[index] = span
            return
        if span.is_recording():
            span.set_attribute("tailguard.attempt.winner", False)
            if outcome.value == "cancelled":
                span.set_attribute("tailguard.attempt.cancelled", True)
        span.end()

    def settle(self, winner: int | None) -> None:
        """The run chose its answer: end the attempts kept open, marking the winner."""
        if self.decisions is not None:
            self.decisions.append({"decision": "answer", "winner_index": winner})
        for index, span in self._open.items():
            if span.is_recording():
                span.set_attribute("tailguard.attempt.winner", index == winner)
            span.end()
        self._open.clear()

    def close_open(self) -> None:
        """End whatever is still open when the request ends (an abandoned run)."""
        self.settle(None) if self._open else None
        while len(self._parents) > 1:
            self._parents.pop()


def _attr(value: Any) -> Any:
    """A span attribute value: scalars as they are, anything else as compact JSON."""
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def _server_attributes(ex: Exchange, span: Span) -> None:
    route = ex.route
    status = ex.status
    method = ex.request.method
    span.update_name(f"{method} {route.name}" if route is not None else method)
    span.set_attribute("http.response.status_code", status)
    if route is not None:
        span.set_attribute("http.route", route.name)
        span.set_attribute("tailguard.route", route.name)
    if ex.backend is not None:
        span.set_attribute("tailguard.backend", ex.backend.name)
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
            span.set_status(Status(StatusCode.ERROR))
    if route is None:
        return
    if route.protocol == "openai":
        _genai_attributes(ex, span)
    elif route.protocol == "kserve-v2":
        from gateway.policy.compile import model_from_path

        model = model_from_path(ex.request.path)
        if model is not None:
            span.set_attribute("gen_ai.request.model", model)


def _genai_attributes(ex: Exchange, span: Span) -> None:
    """GenAI semantic conventions from the buffered request and answer bodies."""
    op = GENAI_OPERATIONS.get(ex.request.path)
    if op is not None:
        span.set_attribute("gen_ai.operation.name", op)
    span.set_attribute("gen_ai.provider.name", "openai")
    request = _json(ex.request.body)
    if isinstance(request, dict) and isinstance(request.get("model"), str):
        span.set_attribute("gen_ai.request.model", request["model"])
    answer = _json(ex.answer_body)
    if not isinstance(answer, dict):
        return
    if isinstance(answer.get("model"), str):
        span.set_attribute("gen_ai.response.model", answer["model"])
    if isinstance(answer.get("id"), str):
        span.set_attribute("gen_ai.response.id", answer["id"])
    usage = answer.get("usage")
    if isinstance(usage, dict):
        for key, attr in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(usage.get(key), int):
                span.set_attribute(attr, usage[key])
    choices = answer.get("choices")
    if isinstance(choices, list):
        reasons = [
            c["finish_reason"]
            for c in choices
            if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
        ]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)


def _json(body: bytes | None) -> Any:
    if not body or len(body) > MAX_PARSED_BODY:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


__all__ = ["GENAI_OPERATIONS", "RequestTrace", "Tracing", "make_exporter"]
