"""The request path as an ordered list of stages; the first is the outermost.

A stage is `async (exchange, next) -> answer`. The house has one ordered list of
stages (observe, authenticate, route, authorize, rate limit, body, fallback,
admit, attempt); when a snapshot is adopted the list is composed per route with
only the stages that route uses, so a request pays one call per stage it needs
and nothing else for the composition. Stages keep mechanism apart from policy: they
read the snapshot the request started with and ask the pure decision objects.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway.clock import Clock
from gateway.errors import ClientError, DeadlineExceeded, RouteNotFound, Shed, TailguardError
from gateway.policy.compile import PRIORITY_NAMES, RouteRuntime
from gateway.proxy.admission import AdmissionGates, Slot
from gateway.proxy.answers import error_answer
from gateway.proxy.attempts import AttemptResult, AttemptRunner
from gateway.proxy.exchange import Exchange, LocalAnswer, json_body_problem
from gateway.quality.tap import QualityTap
from gateway.resilience.outcome import Outcome
from gateway.telemetry.catalog import LabelGuard, Metrics, code_class
from gateway.telemetry.config import DEFAULT_MAX_LABEL_VALUES
from gateway.telemetry.explain import EXPLAIN_HEADER, Explanations
from gateway.telemetry.logs import FailureSummary
from gateway.telemetry.models import ModelMetrics
from gateway.telemetry.tracing import RequestTrace

log = logging.getLogger("tailguard.proxy")

Answer = AttemptResult | LocalAnswer
Handler = Callable[[Exchange], Awaitable[Answer]]


class Stage(Protocol):
    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer: ...


def compose(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """Nest the stages around `terminal`, first stage outermost.

    Each link is a `functools.partial`: calling it returns the stage's own coroutine, so a
    request pays one coroutine per stage and no wrapper frames.
    """
    handler = terminal
    for stage in reversed(stages):
        handler = functools.partial(stage, nxt=handler)
    return handler


class AccessWriter(Protocol):
    def write(self, ex: Exchange, duration: float) -> None: ...


class ExchangeTracer(Protocol):
    def start(self, ex: Exchange) -> None: ...

    def end(self, ex: Exchange) -> None: ...


class OutcomeListener(Protocol):
    def record(self, route: RouteRuntime, backend: str, failed: bool, latency: float) -> None: ...


class SloListener(Protocol):
    def record(self, ex: Exchange, status: int, latency: float) -> None: ...


class ObserveStage:
    """Outermost: every error becomes an answer in the route's protocol (never a traceback).

    It only shapes answers; what a request did is reported once, when it ends, by
    `ExchangeReporter`.
    """

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        try:
            return await nxt(ex)
        except TailguardError as e:
            ex.error_code = e.code
            return error_answer(ex.protocol, e, ex.request.request_id)
        except Exception:
            log.exception("unexpected error serving request %s", ex.request.request_id)
            ex.error_code = "internal_error"
            return error_answer(
                ex.protocol, TailguardError("internal error"), ex.request.request_id
            )


class ExchangeReporter:
    """Reports every exchange once, at its end: metrics, the canary's outcome, quality sampling.

    The edge calls `begin` when a request arrives and registers `end` as the exchange's
    `on_end`, so a streamed answer is counted when its last byte is written and a client
    that leaves is counted as such (status 499, reported to no backend's account).
    """

    def __init__(
        self,
        metrics: Metrics,
        clock: Clock,
        canary: OutcomeListener | None = None,
        slo: SloListener | None = None,
        quality: QualityTap | None = None,
    ) -> None:
        self._m = metrics
        self._clock = clock
        self._canary = canary
        self._quality = quality
        self._failures = FailureSummary(log, clock)
        self._slo = slo
        self.tenants = LabelGuard(metrics, "tenant", DEFAULT_MAX_LABEL_VALUES)
        # the data and model layers (tensors, tokens, finish reasons), bounded by model
        self.models = ModelMetrics(metrics, DEFAULT_MAX_LABEL_VALUES)
        self.model_metrics = True  # the policy's telemetry.model_metrics
        # the access log and the tracer, when the policy turns them on (see gateway.app)
        self.access: AccessWriter | None = None
        self.tracer: ExchangeTracer | None = None
        self.explanations: Explanations | None = None

    def chunk_written(self, ex: Exchange, gap: float, sent_before: int) -> None:
        """A streamed chunk went out: `gap` since the request (first) or the previous chunk."""
        route = ex.route
        if route is None:
            return
        m = self._m
        if sent_before:
            m.child(m.inter_token, route.name).observe(gap)
            return
        cell = m.child(m.time_to_first_token, route.name)
        trace = ex.trace
        exemplar = trace.exemplar if trace is not None else None
        if exemplar is None:
            cell.observe(gap)
        else:
            cell.observe_traced(gap, exemplar)

    def begin(self, ex: Exchange) -> None:
        self._m.in_flight.inc()

    def end(self, ex: Exchange) -> None:
        m = self._m
        m.in_flight.dec()
        status = ex.status
        route = ex.route
        route_name = route.name if route is not None else ""
        backend_name = ex.backend.name if ex.backend is not None else ""
        protocol = "http" if ex.request.grpc is None else "grpc"
        m.child(m.requests, route_name, backend_name, code_class(status), protocol).inc()
        broken = ex.stream_outcome is not None and ex.stream_outcome is not Outcome.SUCCESS
        code = ex.error_code
        if code is None and broken:
            code = "client_closed" if ex.stream_outcome is Outcome.CANCELLED else "stream_aborted"
        elif code is None and status == CLIENT_CLOSED:
            code = "client_closed"
        if code is not None:
            m.errors.labels(route_name, code).inc()
            if 400 <= status < 499 and ex.error_code is not None:
                m.child(m.invalid_requests, route_name, code).inc()
            if status >= 500 or broken:
                self._failures.count(route_name, code)
        elif status >= 500:
            self._failures.count(route_name, f"backend answered {status}")
        latency = self._clock.now() - ex.request.received_at
        trace = ex.trace
        exemplar = None
        if trace is not None:
            exemplar = trace.exemplar
            if self.tracer is not None:
                self.tracer.end(ex)
            if trace.decisions is not None and self.explanations is not None:
                self.explanations.store(ex)
        if self.access is not None:
            self.access.write(ex, latency)
        if route is None:
            return
        duration = m.child(m.request_duration, route_name, protocol)
        ttfb = ex.first_byte_at - ex.request.received_at if ex.first_byte_at else None
        if exemplar is None:
            duration.observe(latency)
            if ttfb is not None:
                m.child(m.time_to_first_byte, route_name).observe(ttfb)
        else:
            # a sampled trace: its id rides on the bucket, so a slow bucket links to it
            duration.observe_traced(latency, exemplar)
            if ttfb is not None:
                m.child(m.time_to_first_byte, route_name).observe_traced(ttfb, exemplar)
        body = ex.request.body
        if body:
            m.child(m.request_body_size, route_name).observe(len(body))
        if ex.identity is not None:
            m.child(m.tenant_requests, route_name, self.tenants(ex.identity.tenant)).inc()
        if self.model_metrics and route.protocol in MODEL_PROTOCOLS:
            self.models.observe(ex, route)
        if self._slo is not None and status != CLIENT_CLOSED:
            self._slo.record(ex, status, latency)
        tap = self._quality
        if tap is not None and route.tap_share:
            tap.observe(ex, latency)  # quality sampling and shadows: a draw and an append
        canary = self._canary
        side = ex.split_backend
        if route.canary is None or canary is None or side is None or not ex.attempts:
            return
        if status == CLIENT_CLOSED or ex.stream_outcome is Outcome.CANCELLED:
            return  # the client left: that says nothing about either side
        # judged by what the split chose and tried (not cache hits or shed requests); a
        # fallback rescuing a failing canary, or a stream that broke, is the canary's failure
        failed = status >= 500 or ex.fallback is not None or broken
        if failed or status < 400:
            canary.record(route, side, failed, latency)


# What the access metrics call an exchange whose client went away before its answer.
CLIENT_CLOSED = 499
# Route protocols whose bodies feed the data and model layers of the metrics.
MODEL_PROTOCOLS = frozenset({"kserve-v2", "openai"})


class RouteStage:
    """Match a route, pick the backend (weighted, sticky), set the deadline, run its chain.

    The chains (one per route, with only the stages that route uses) are composed when a
    snapshot is adopted; this stage is made for that snapshot and never changes.
    """

    def __init__(
        self,
        rng: random.Random,
        chains: Mapping[str, Handler],
        explanations: Explanations | None = None,
    ) -> None:
        self._rng = rng
        self._chains = chains
        self._explanations = explanations

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        req = ex.request
        explanations = self._explanations
        if explanations is not None and EXPLAIN_HEADER in req.headers and explanations.wanted(ex):
            if ex.trace is None:
                ex.trace = RequestTrace(None, None)
            ex.trace.decisions = []
            ex.add_headers({EXPLAIN_HEADER: f"/admin/explain/{req.request_id}"})
            if ex.identity is not None:
                ex.trace.note("caller", tenant=ex.identity.tenant)
        route = ex.snapshot.route_for(req.method, req.path, req.headers)
        call = req.grpc
        if route is None:
            via = f" (gRPC {req.path_qs.rpartition('/')[2]})" if call is not None else ""
            raise RouteNotFound(f"no route matches {req.method} {req.path}{via}")
        ex.route = route
        sticky = req.headers.get(route.sticky_header) if route.sticky_header else None
        if call is None:
            ex.protocol = route.protocol
        elif call.sequence is not None:
            sticky = call.sequence  # a sequence's requests must all reach one model instance
        backend = ex.snapshot.backends[route.pick_backend(sticky, self._rng.random())]
        ex.backend = backend
        ex.split_backend = backend.name
        ex.deadline = req.received_at + route.timeout
        if ex.trace is not None:
            ex.trace.note(
                "route", route=route.name, split_backend=backend.name, sticky=sticky is not None
            )
        if call is not None and call.deadline is not None and call.deadline < ex.deadline:
            ex.deadline = call.deadline  # the client's own deadline bounds the route's
        return await self._chains[route.name](ex)


class BodyStage:
    """Read the request body, once the caller is known to be allowed and within limits.

    Reading after authentication and rate limiting means an anonymous or throttled caller
    never makes the gateway buffer `max_body` bytes. On JSON routes the body's shape is
    checked: Triton answers a client's bad JSON with 500, and refusing garbage here keeps
    one bad client from being counted against a healthy backend. Only a shape check on the
    hot path; a full parse happens if a backend fails the request (see attempts).
    """

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        reader = ex.body_reader
        if reader is not None:
            ex.body_reader = None
            body = await reader(ex.snapshot.settings.max_body)
            if body:
                ex.request = req = ex.request.with_body(body)
                backend = ex.backend
                if (
                    backend is not None
                    and backend.protocol != "http"
                    and req.method in ("POST", "PUT")
                ):
                    problem = json_body_problem(
                        req.headers, body, full=False, limit=ex.snapshot.settings.max_body
                    )
                    if problem is not None:
                        raise ClientError(problem)
        return await nxt(ex)


class AdmitStage:
    """Global and per-route concurrency limits with bounded, prioritised queues.

    An admitted request holds its slots until the exchange ends (its last byte written),
    so a long stream counts against the limit for as long as it runs.
    """

    def __init__(self, gates: AdmissionGates, clock: Clock) -> None:
        self._gates = gates
        self._clock = clock

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route = ex.route
        assert route is not None
        gates = self._gates.for_request(ex.snapshot, route)
        if gates:
            priority = _priority(ex, route)
            trace = ex.trace
            for gate in gates:
                try:
                    await gate.acquire(priority, route.name)
                except Shed as e:
                    if trace is not None:
                        trace.note("admission", admitted=False, priority=priority, reason=e.message)
                    raise
                ex.hold(Slot(gate, self._clock))
            if trace is not None:
                trace.note("admission", admitted=True, priority=priority, gates=len(gates))
        return await nxt(ex)


def _priority(ex: Exchange, route: RouteRuntime) -> int:
    """The priority the request asked for, if its caller may ask; else normal."""
    header = route.priority_header
    if header is None:
        return PRIORITY_NORMAL
    value = ex.request.headers.get(header)
    if value is None:
        return PRIORITY_NORMAL
    trusted = route.priority_tenants
    if trusted is not None and (ex.identity is None or ex.identity.tenant not in trusted):
        return PRIORITY_NORMAL
    return PRIORITY_NAMES.get(value.strip().lower(), PRIORITY_NORMAL)


PRIORITY_NORMAL = PRIORITY_NAMES["normal"]


class AttemptStage:
    """Innermost: run the attempts within the deadline.

    Every wait inside is bounded by the deadline (per-try timeouts, backoff checked against
    the remaining time, hedge timers), so no extra timer wraps the whole run.
    """

    def __init__(self, runner: AttemptRunner, clock: Clock) -> None:
        self._runner = runner
        self._clock = clock

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route, backend = ex.route, ex.backend
        assert route is not None and backend is not None
        if ex.deadline <= self._clock.now():
            raise DeadlineExceeded("the route's deadline passed before any attempt")
        return await self._runner.run(ex, route, backend)


__all__ = [
    "AdmitStage",
    "Answer",
    "AttemptStage",
    "BodyStage",
    "ExchangeReporter",
    "Handler",
    "ObserveStage",
    "RouteStage",
    "Shed",
    "Stage",
    "compose",
]
