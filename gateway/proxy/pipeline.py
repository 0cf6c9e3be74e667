"""The request path as an ordered list of stages; the first is the outermost.

A stage is `async (exchange, next) -> answer`. The list is composed once into
nested closures when the app starts, so a request pays one call per stage and
nothing else for the composition. Stages keep mechanism apart from policy: they
read the snapshot the request started with and ask the pure decision objects.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from gateway.clock import Clock
from gateway.errors import ClientError, DeadlineExceeded, RouteNotFound, Shed, TailguardError
from gateway.policy.compile import PRIORITY_NAMES, RouteRuntime
from gateway.proxy.admission import AdmissionGates
from gateway.proxy.attempts import AttemptResult, AttemptRunner
from gateway.proxy.exchange import Exchange, LocalAnswer, json_body_problem
from gateway.telemetry.catalog import Metrics, code_class

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


def error_answer(ex: Exchange, err: TailguardError) -> LocalAnswer:
    """The JSON error body every gateway-made error uses."""
    body = json.dumps(
        {"error": {"code": err.code, "message": err.message, "request_id": ex.request.request_id}}
    ).encode()
    headers = {"Content-Type": "application/json", **err.headers}
    return LocalAnswer(err.status, body, headers, err)


class OutcomeListener(Protocol):
    def record(self, route: RouteRuntime, backend: str, failed: bool, latency: float) -> None: ...


class ObserveStage:
    """Outermost: counts, times, and turns every error into a JSON answer (never a traceback).

    Requests of routes with a canary are also reported to `canary` (client errors excluded:
    a bad request says nothing about either side).
    """

    def __init__(
        self, metrics: Metrics, clock: Clock, canary: OutcomeListener | None = None
    ) -> None:
        self._m = metrics
        self._clock = clock
        self._canary = canary

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        m = self._m
        m.in_flight.inc()
        try:
            answer = await nxt(ex)
        except TailguardError as e:
            answer = error_answer(ex, e)
            route = ex.route.name if ex.route is not None else ""
            m.errors.labels(route, e.code).inc()
        except Exception:
            log.exception("unexpected error serving request %s", ex.request.request_id)
            answer = error_answer(ex, TailguardError("internal error"))
            m.errors.labels(ex.route.name if ex.route else "", "internal_error").inc()
        finally:
            m.in_flight.dec()
        status = answer.status if isinstance(answer, LocalAnswer) else _status(answer)
        route_name = ex.route.name if ex.route is not None else ""
        backend_name = ex.backend.name if ex.backend is not None else ""
        m.child(m.requests, route_name, backend_name, code_class(status)).inc()
        if ex.route is not None:
            latency = self._clock.now() - ex.request.received_at
            m.child(m.request_duration, route_name).observe(latency)
            canary = self._canary
            side = ex.split_backend
            if (
                ex.route.canary is not None
                and canary is not None
                and side is not None
                and ex.attempts
            ):
                # judged by what the split chose and tried (not cache hits or shed requests);
                # a fallback rescuing a failing canary is still the canary's failure
                failed = status >= 500 or ex.fallback is not None
                if failed or status < 400:
                    canary.record(ex.route, side, failed, latency)
        return answer


def _status(result: AttemptResult) -> int:
    assert result.response is not None
    return result.response.status


class RouteStage:
    """Match a route, pick the backend (weighted, sticky) and set the request's deadline.

    It then calls the route's own chain (`route.chain`, composed when the snapshot was
    assembled with only the stages that route uses) when there is one, else `nxt`.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        req = ex.request
        route = ex.snapshot.route_for(req.method, req.path, req.headers)
        if route is None:
            via = f" (gRPC {req.path_qs.rpartition('/')[2]})" if req.grpc is not None else ""
            raise RouteNotFound(f"no route matches {req.method} {req.path}{via}")
        ex.route = route
        sticky = req.headers.get(route.sticky_header) if route.sticky_header else None
        call = req.grpc
        if call is not None and call.sequence is not None:
            sticky = call.sequence  # a sequence's requests must all reach one model instance
        backend = ex.snapshot.backends[route.pick_backend(sticky, self._rng.random())]
        ex.backend = backend
        ex.split_backend = backend.name
        ex.deadline = req.received_at + route.timeout
        if call is not None:
            if call.deadline is not None and call.deadline < ex.deadline:
                ex.deadline = call.deadline  # the client's own deadline bounds the route's
        elif backend.protocol != "http" and req.body and req.method in ("POST", "PUT"):
            # Triton answers a client's bad JSON with 500; refusing garbage here keeps one bad
            # client from being counted against a healthy backend. Only a shape check on the
            # hot path; a full parse happens if a backend fails the request (see attempts).
            problem = json_body_problem(req.headers, req.body, full=False)
            if problem is not None:
                raise ClientError(problem)
        chain = route.chain
        return await (chain(ex) if chain is not None else nxt(ex))


class AdmitStage:
    """Global and per-route concurrency limits with bounded, prioritised queues."""

    def __init__(self, gates: AdmissionGates, clock: Clock) -> None:
        self._gates = gates
        self._clock = clock

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route = ex.route
        assert route is not None
        gates = self._gates.for_request(ex.snapshot, route)
        if not gates:
            return await nxt(ex)
        priority = _priority(ex, route)
        acquired = []
        started = self._clock.now()
        try:
            for gate in gates:
                await gate.acquire(priority, route.name)
                acquired.append(gate)
            started = self._clock.now()
            return await nxt(ex)
        finally:
            rtt = self._clock.now() - started
            for gate in acquired:
                gate.release(rtt)


def _priority(ex: Exchange, route: RouteRuntime) -> int:
    if route.priority_header is None:
        return PRIORITY_NAMES["normal"]
    value = ex.request.headers.get(route.priority_header)
    if value is None:
        return PRIORITY_NAMES["normal"]
    return PRIORITY_NAMES.get(value.strip().lower(), PRIORITY_NAMES["normal"])


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


async def _terminal(ex: Exchange) -> Answer:  # pragma: no cover - never reached
    raise RuntimeError("the innermost stage must answer")


def build_pipeline(stages: Sequence[Stage]) -> Handler:
    return compose(stages, _terminal)


__all__ = [
    "AdmitStage",
    "Answer",
    "AttemptStage",
    "Handler",
    "ObserveStage",
    "RouteStage",
    "Shed",
    "Stage",
    "build_pipeline",
    "compose",
    "error_answer",
]
