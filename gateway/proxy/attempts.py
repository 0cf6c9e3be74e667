"""Attempt orchestration: retries, hedging, per-try timeouts and breaker accounting.

The decisions (which endpoint, whether to retry, how long to back off, whether
to hedge) are asked of the pure objects in `gateway.resilience`; this module
only does what they say: it starts attempts, waits, cancels losers and reports
every outcome back exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import NoReturn

from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.errors import (
    AttemptFailed,
    ClientError,
    DeadlineExceeded,
    NoHealthyEndpoint,
    TailguardError,
    UpstreamUnavailable,
)
from gateway.policy.compile import (
    IDEMPOTENT_METHODS,
    BackendRuntime,
    EndpointSpec,
    RouteRuntime,
)
from gateway.proxy.exchange import Exchange, GrpcCall, ProxyRequest, json_body_problem
from gateway.proxy.transport import HOP_BY_HOP, UpstreamResponse, no_answer_within
from gateway.proxy.transports import Transports
from gateway.resilience.budget import TokenBudget
from gateway.resilience.hedge import HedgeDelayEstimator
from gateway.resilience.outcome import Outcome
from gateway.resilience.retry import parse_retry_after
from gateway.telemetry.catalog import Metrics
from gateway.telemetry.changes import StateChanges

log = logging.getLogger("tailguard.proxy")


class AttemptResult:
    """How one attempt ended. A failure carries either an HTTP answer or just a message."""

    __slots__ = ("index", "message", "outcome", "response", "retry_after", "started", "unreported")

    def __init__(
        self,
        index: int,
        outcome: Outcome,
        response: UpstreamResponse | None,
        message: str,
        retry_after: float | None,
        started: float = 0.0,
        unreported: bool = False,
    ) -> None:
        self.started = started
        self.unreported = unreported
        self.index = index
        self.outcome = outcome
        self.response = response
        self.message = message
        self.retry_after = retry_after

    @property
    def acceptable(self) -> bool:
        """A success, or the client's own error: either way, nothing to retry."""
        return not self.outcome.is_failure


# Forwarding facts the gateway states itself; a client's own values are not passed on.
_GATEWAY_SET = frozenset({"host", "content-length", "x-forwarded-proto", "x-request-id"})


def upstream_headers(req: ProxyRequest, strip: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """The headers an attempt sends: the client's, minus hop-by-hop, plus forwarding facts.

    Case-insensitive and multi-valued like HTTP itself: a client's `x-request-id` cannot sit
    beside the gateway's `X-Request-Id`, and repeated headers all go through. `strip` names
    headers meant for the gateway alone (its own credentials): a backend never sees the key a
    client authenticated to the gateway with.
    """
    out: CIMultiDict[str] = CIMultiDict()
    named = req.headers.get("Connection")
    extra = {h.strip().lower() for h in named.split(",")} if named else ()
    forwarded_for = ""
    for k, v in req.headers.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in extra or lk in _GATEWAY_SET or lk in strip:
            continue
        if lk == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {v}" if forwarded_for else v
            continue
        out.add(k, v)
    ip = req.client_ip
    out["X-Forwarded-For"] = f"{forwarded_for}, {ip}" if forwarded_for else ip
    out["X-Forwarded-Proto"] = req.scheme
    out["X-Request-Id"] = req.request_id
    return out


class AttemptRunner:
    """Runs the attempts of one request against one backend and returns the answer to give."""

    def __init__(
        self,
        transports: Transports,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        deadline_header: Callable[[], str | None],
    ) -> None:
        self._transports = transports
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._deadline_header = deadline_header
        # told (backend, endpoint id) of every ejection this replica enforces, to tell peers
        self.on_ejection: Callable[[str, str], None] | None = None
        # recent state changes (the status page); set by the composition root
        self.changes: StateChanges | None = None

    async def run(
        self, ex: Exchange, route: RouteRuntime, backend: BackendRuntime
    ) -> AttemptResult:
        """The answer for the client: the first acceptable one, else the last failed HTTP answer.

        The result always has a `response`. When it is a stream, `ex.stream_done` is set:
        the exchange's end settles the connection and the attempt's report with how the
        stream ended. Raises a `TailguardError` when no attempt produced an HTTP answer.
        """
        if not ex.deposited:
            # once per client request: a fallback's second run is not a second request
            ex.deposited = True
            if route.retry_budget is not None:
                route.retry_budget.deposit()
            if route.hedge_budget is not None:
                route.hedge_budget.deposit()
        call = ex.request.grpc
        if call is None and ex.upstream_headers is None:
            ex.upstream_headers = upstream_headers(ex.request, ex.snapshot.strip_headers)
        if (
            route.hedge is None
            or not (route.repeatable or ex.request.method in IDEMPOTENT_METHODS)
            or (call is not None and call.single_shot)
        ):
            # a request that may not arrive twice is never hedged (the rule retries obey);
            # nor is a stream or a step of a Triton sequence
            result = await self._sequential(ex, route, backend)
        else:
            result = await self._hedged(ex, route, backend)
        m = self._metrics
        m.child(m.attempts_per_request, route.name).observe(ex.attempts)
        if ex.trace is not None:
            ex.trace.settle(result.index if result.acceptable else None)
        if result.response is None:
            self._raise_for(ex, result)
        if result.unreported:
            ex.stream_done = functools.partial(self._settle_stream, backend, result)
        return result

    # --- the two loops -------------------------------------------------------------------

    async def _sequential(
        self, ex: Exchange, route: RouteRuntime, backend: BackendRuntime
    ) -> AttemptResult:
        tried: set[int] = set()
        last: AttemptResult | None = None
        call = ex.request.grpc
        try:
            while True:
                index = self._pick(backend, tried, None, ex)
                if index is None:
                    if last is not None:
                        return last
                    raise NoHealthyEndpoint(_no_endpoint(ex, backend))
                tried.add(index)
                result = await self._attempt(ex, route, backend, index)
                if result.acceptable:
                    if last is not None:
                        self._discard(backend, last)
                    return result
                last = self._keep_most_informative(backend, last, result)
                if call is not None and call.single_shot:
                    return last  # a stream or a sequence step goes to one endpoint, once
                delay = self._retry_delay(ex, route, result)
                if delay is None:
                    return last
                if delay > 0:
                    await asyncio.sleep(delay)
        except BaseException:
            # the client left during a backoff (or an attempt raised): a failed answer kept
            # for the client may hold a streamed connection, which nobody else will close
            if last is not None:
                self._discard(backend, last)
            raise

    async def _hedged(
        self, ex: Exchange, route: RouteRuntime, backend: BackendRuntime
    ) -> AttemptResult:
        """The first attempt runs in the request's own task; hedges (and retries) in tasks.

        Most requests never hedge, so they pay no task, done callback or extra wake-up for
        the race: a hedge is started by a timer, and a hedge that wins while the first
        attempt still runs cancels the request's task, whose cancellation is then taken back
        (as `asyncio.timeout` does), unless someone else (the client leaving) cancelled it
        too. Once the first attempt has ended without an answer to give, the request waits
        for what is still racing.
        """
        hedge = route.hedge
        assert hedge is not None
        max_extra = hedge.config.max_extra
        clock = self._clock
        tried: set[int] = set()
        pending: dict[asyncio.Task[AttemptResult], int] = {}
        last: AttemptResult | None = None
        extra = 0
        # One future per wait, woken by an attempt's end or the hedge timer: asyncio.wait
        # would build a waiter, a timer and a callback per attempt on every request.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        due = False
        me = asyncio.current_task(loop)
        assert me is not None
        cancelling = me.cancelling()
        inline = True  # the first attempt is running in this task
        overtaken = False  # a hedge won while it ran: this task is being cancelled for it

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        def attempt_done(task: asyncio.Task[AttemptResult]) -> None:
            nonlocal overtaken
            wake()
            if (
                inline
                and not overtaken
                and not task.cancelled()
                and task.exception() is None
                and task.result().acceptable
            ):
                overtaken = True
                me.cancel()

        def launch(delay: float, avoid_region: str | None) -> int | None:
            index = self._pick(backend, tried, avoid_region, ex)
            if index is not None:
                tried.add(index)
                task = loop.create_task(self._attempt(ex, route, backend, index, delay))
                task.add_done_callback(attempt_done)
                pending[task] = index
            return index

        first = self._pick(backend, tried, None, ex)
        if first is None:
            raise NoHealthyEndpoint(_no_endpoint(ex, backend))
        tried.add(first)
        first_region = backend.endpoints[first].region
        started = clock.now()
        estimator = route.hedge_delays.get(backend.name)
        hedge_delay = estimator.delay(started) if estimator is not None else hedge.delay(None)
        next_hedge = started + hedge_delay if hedge_delay is not None else None
        timer: asyncio.TimerHandle | None = None

        def fire_hedge() -> None:
            """The hedge delay passed: send a hedge if the policy and the budget allow."""
            nonlocal extra, next_hedge
            assert hedge is not None and hedge_delay is not None
            remaining = ex.deadline - clock.now()
            send = hedge.should_hedge(extra, remaining, hedge_delay, route.hedge_budget)
            if ex.trace is not None:
                ex.trace.note(
                    "hedge_timer",
                    delay=hedge_delay,
                    send=send,
                    budget=_balance(route.hedge_budget),
                )
            m = self._metrics
            if send:
                if launch(0.0, first_region) is not None:
                    extra += 1
                    m.child(m.hedges_sent, route.name).inc()
                next_hedge = clock.now() + hedge_delay
            else:
                if route.hedge_budget is not None and remaining > hedge_delay:
                    m.child(m.budget_exhausted, route.name, "hedge").inc()
                next_hedge = None

        def hedge_due_inline(again: Callable[..., None], deferred: bool = False) -> None:
            # `again` is this function: naming itself would make a closure that refers to
            # itself, a reference cycle leaving every hedged request's exchange to the cyclic
            # GC (under load: pauses of 20 ms every few thousand requests)
            nonlocal timer
            timer = None
            if not inline or overtaken:
                return
            if not deferred:
                # decided after the wake-ups already due: a first answer read in this loop turn
                # ends the first attempt before a hedge is paid for, counted and sent
                loop.call_soon(again, again, True)
                return
            fire_hedge()
            if next_hedge is not None and extra < max_extra:
                timer = loop.call_later(max(0.0, next_hedge - clock.now()), again, again)

        def hedge_due() -> None:
            nonlocal due
            due = True
            wake()

        try:
            if next_hedge is not None and extra < max_extra:
                timer = loop.call_later(
                    max(0.0, next_hedge - clock.now()), hedge_due_inline, hedge_due_inline
                )
            try:
                result: AttemptResult | None = await self._attempt(ex, route, backend, first)
            except asyncio.CancelledError:
                if not overtaken or me.uncancel() > cancelling:
                    raise  # the client left (or the gateway stops): the race ends with it
                result = None  # a hedge won; the first attempt reported itself CANCELLED
                if estimator is not None:
                    # overtaken: the first attempt took at least this long
                    now = clock.now()
                    estimator.observe(now, now - started)
            finally:
                inline = False
                if timer is not None:
                    timer.cancel()
                    timer = None
            if result is not None:
                if overtaken:
                    me.uncancel()  # the attempt swallowed the cancellation: take it back anyway
                if estimator is not None:
                    _observe_first(estimator, result, started, clock.now())
                if result.acceptable:
                    return result  # the usual end: no hedge was sent, or all lost
                # hedges that already ended did so while the first attempt ran: its failure is
                # the newer one (a winner among them is left for the loop below to return)
                ended = [task for task in pending if task.done()]
                if not any(task.result().acceptable for task in ended):
                    for task in ended:
                        pending.pop(task)
                        last = self._keep_most_informative(backend, last, task.result())
                last = self._keep_most_informative(backend, last, result)
                if not pending:
                    delay = self._retry_delay(ex, route, last)
                    if delay is None or launch(delay, None) is None:
                        return last
                    if last.response is not None and last.response.stream is not None:
                        self._discard(backend, last)
            while pending:
                if next_hedge is not None and extra < max_extra:
                    timer = loop.call_later(max(0.0, next_hedge - clock.now()), hedge_due)
                await waiter
                waiter = loop.create_future()
                if timer is not None:
                    timer.cancel()
                    timer = None
                done = [task for task in pending if task.done()]
                if not done:
                    if not due:
                        continue  # a late wake-up from an attempt already collected
                    due = False
                    fire_hedge()
                    continue
                due = False
                winner: AttemptResult | None = None
                for task in done:
                    pending.pop(task)
                    result = task.result()
                    if winner is None and result.acceptable:
                        winner = result
                        continue
                    if result.acceptable:
                        self._discard(backend, result)  # a second winner in the same tick
                    else:
                        last = self._keep_most_informative(backend, last, result)
                if winner is not None:
                    if last is not None:
                        self._discard(backend, last)
                    if winner.index != first:
                        ex.hedged = True
                        m = self._metrics
                        m.child(m.hedges_won, route.name).inc()
                    return winner
                if not pending and last is not None:
                    delay = self._retry_delay(ex, route, last)
                    if delay is None or launch(delay, None) is None:
                        return last
                    if last.response is not None and last.response.stream is not None:
                        self._discard(backend, last)
            assert last is not None
            return last
        except BaseException:
            if last is not None:
                self._discard(backend, last)  # may hold a streamed connection nobody will read
            raise
        finally:
            if timer is not None:
                timer.cancel()
            for task in pending:
                if not task.done():
                    task.cancel()
                elif not task.cancelled() and task.exception() is None:
                    # ended while the first attempt ran, and nobody will read it: a failed
                    # answer may still hold a streamed connection
                    self._discard(backend, task.result())
            if pending:
                # cancelled losers report CANCELLED and close their connections before we go on
                await asyncio.gather(*pending, return_exceptions=True)

    def _keep_most_informative(
        self, backend: BackendRuntime, last: AttemptResult | None, new: AttemptResult
    ) -> AttemptResult:
        """Of two failures keep the newer, unless only the older has an HTTP answer to pass on."""
        if last is None:
            return new
        if new.response is None and last.response is not None and last.response.stream is None:
            return last
        self._discard(backend, last)
        return new

    def _discard(self, backend: BackendRuntime, result: AttemptResult) -> None:
        """Let go of an answer nobody will read: close its connection, settle its report."""
        if result.response is not None and result.response.stream is not None:
            result.response.close()
            result.response = None
        if result.unreported:
            result.unreported = False
            self._finish(backend, result.index, Outcome.CANCELLED, 0.0)

    # --- one attempt ---------------------------------------------------------------------

    async def _attempt(
        self,
        ex: Exchange,
        route: RouteRuntime,
        backend: BackendRuntime,
        index: int,
        delay: float = 0.0,
    ) -> AttemptResult:
        if delay > 0:
            await asyncio.sleep(delay)
        clock = self._clock
        state = backend.states[index]
        spec = state.spec
        now = clock.now()
        remaining = ex.deadline - now
        timeout = route.retry.try_timeout(remaining) if route.retry is not None else remaining
        req = ex.request
        call = req.grpc
        if call is None:
            headers = (
                ex.upstream_headers.copy()
                if ex.upstream_headers is not None
                else upstream_headers(ex.request, ex.snapshot.strip_headers)
            )
            header = self._deadline_header()
            if header is not None:
                headers[header] = str(max(1, int(timeout * 1000)))
            transport = self._transports.get(spec, backend.pool, backend.protocol)
        ex.attempts += 1
        trace = ex.trace
        span = (
            trace.attempt_start(backend, spec, ex.attempts, headers if call is None else {}, now)
            if trace is not None
            else None
        )
        state.outstanding += 1
        state.last_used = now
        response: UpstreamResponse | None = None
        message = ""
        retry_after: float | None = None
        try:
            if call is None:
                # the transport bounds the attempt itself (one timer, no asyncio.timeout)
                response = await transport.send(req.method, req.path_qs, headers, req.body, timeout)
            elif not call.stream:
                # the call's own gRPC deadline bounds it (and tells the backend): no second timer
                response = await self._grpc_call(ex, call, backend, spec, now, timeout)
            else:
                async with asyncio.timeout(timeout):
                    response = await self._grpc_call(ex, call, backend, spec, now, timeout)
            outcome = response.outcome
            if (
                outcome is Outcome.STATUS_5XX
                and backend.protocol != "http"
                and call is None
                and req.body
                and json_body_problem(req.headers, req.body, full=True) is not None
            ):
                # the backend choked on the client's bad JSON: the client's fault, not its
                self._finish(backend, index, Outcome.CLIENT_ERROR, clock.now() - now)
                if trace is not None:
                    trace.attempt_end(span, index, Outcome.CLIENT_ERROR, 500, keep=False)
                response.close()
                raise ClientError(json_body_problem(req.headers, req.body, full=True) or "")
            if response.retry_after is not None:
                retry_after = parse_retry_after(response.retry_after, time.time())
            if outcome.is_failure:
                message = f"{spec.url} answered {response.status}"
        except AttemptFailed as e:
            outcome = e.outcome  # type: ignore[assignment]
            message = f"{spec.url}: {e.message}"
        except TimeoutError:
            outcome = Outcome.TIMEOUT
            message = f"{spec.url}: {no_answer_within(timeout)}"
        except asyncio.CancelledError:
            self._finish(backend, index, Outcome.CANCELLED, clock.now() - now)
            if trace is not None:
                trace.attempt_end(span, index, Outcome.CANCELLED, None, keep=False)
            raise
        if trace is not None:
            status = response.status if response is not None else None
            trace.attempt_end(span, index, outcome, status, keep=not outcome.is_failure)
        if response is not None and response.stream is not None and not outcome.is_failure:
            # a committed stream reports when it ends; see `finish_stream`
            ex.endpoint = spec.url
            return AttemptResult(index, outcome, response, message, retry_after, now, True)
        changes = self.changes
        if trace is not None and changes is not None:
            # a breaker this outcome opens, an ejection it triggers: this request's doing
            changes.trace_id = trace.trace_id
        try:
            self._finish(backend, index, outcome, clock.now() - now)
        finally:
            if changes is not None:
                changes.trace_id = None
        if not outcome.is_failure:
            ex.endpoint = spec.url
        return AttemptResult(index, outcome, response, message, retry_after)

    async def _grpc_call(
        self,
        ex: Exchange,
        call: GrpcCall,
        backend: BackendRuntime,
        spec: EndpointSpec,
        now: float,
        timeout: float,
    ) -> UpstreamResponse:
        """One gRPC attempt: the remaining budget travels upstream as the call's deadline.

        A stream's deadline is the client's own (it may outlive the route's timeout, which
        bounds only getting it started).
        """
        transport = self._transports.grpc(spec, backend.pool)
        req = ex.request
        if call.stream:
            left = call.deadline - now if call.deadline is not None else None
            return await transport.open_stream(
                req.path_qs, req.body, call.rest, call.metadata, left
            )
        return await transport.unary(req.path_qs, req.body, call.metadata, timeout)

    def _finish(
        self, backend: BackendRuntime, index: int, outcome: Outcome, latency: float
    ) -> None:
        state = backend.states[index]
        state.outstanding -= 1
        ejection = backend.report(index, outcome, latency, self._clock.now())
        m = self._metrics
        m.child(m.attempts, backend.name, state.spec.url, outcome.value).inc()
        if outcome is not Outcome.CANCELLED:
            m.child(m.attempt_duration, backend.name).observe(latency)
        if ejection is not None:
            log.warning(
                "endpoint %s of %s ejected for %.0fs (%s)",
                state.spec.url,
                backend.name,
                ejection.until - self._clock.now(),
                ejection.reason.value.replace("_", " "),
            )
            m.ejections.labels(backend.name, ejection.reason.value).inc()
            m.outliers_detected.labels(backend.name, ejection.reason.value).inc()
            if self.changes is not None:
                reason = ejection.reason.value.replace("_", " ")
                self.changes.record(
                    "ejection",
                    f"{state.spec.url} ({backend.name}) ejected for "
                    f"{ejection.until - self._clock.now():.0f}s ({reason})",
                    backend=backend.name, endpoint=state.spec.url, region=state.spec.region,
                    state="ejected", reason=ejection.reason.value,
                )  # fmt: skip
            if self.on_ejection is not None:
                self.on_ejection(backend.name, state.spec.id)

    def _settle_stream(
        self, backend: BackendRuntime, result: AttemptResult, outcome: Outcome
    ) -> None:
        """A streamed answer has ended (read to its end, broken, or abandoned): give its
        connection back or close it, and report the attempt once."""
        up = result.response
        if up is not None:
            if outcome is Outcome.SUCCESS:
                up.release()
            else:
                up.close()
        if result.unreported:
            result.unreported = False
            self._finish(backend, result.index, outcome, self._clock.now() - result.started)

    # --- decisions -----------------------------------------------------------------------

    def _pick(
        self,
        backend: BackendRuntime,
        tried: set[int],
        avoid_region: str | None,
        ex: Exchange | None = None,
    ) -> int | None:
        """An endpoint for the next attempt; one whose breaker refuses is skipped, not waited on."""
        now = self._clock.now()
        states = backend.states
        call = ex.request.grpc if ex is not None else None
        if call is not None and call.sequence is not None:
            return self._pick_sticky(backend, tried, call.sequence, now)
        # endpoints without an address for this request's protocol are never picked, not even
        # in panic, nor as the last resort a retry may go back to
        unfit = backend.no_grpc if call is not None else backend.no_http
        if len(states) == 1 and not tried and not unfit:
            # the common single-endpoint case: no balancing to do when it is plainly usable
            only = states[0]
            outlier = backend.outlier
            ejected = outlier is not None and outlier.is_ejected(only.spec.id, now)
            if only.usable(now, ejected) and (only.breaker is None or only.breaker.allow(now)):
                return 0
        available = backend.availability(now)
        outstanding = backend.loads(now)
        refused: set[int] = set(unfit) if unfit else set()
        if len(refused) == len(states):
            return None
        for i in refused:
            available[i] = False
        for _ in range(len(backend.states)):
            exclude = tried | refused if refused else tried
            pick = backend.balancer.pick(
                available, outstanding, self._rng, exclude=exclude, avoid_region=avoid_region
            )
            if pick is None or (pick.excluded and pick.index in refused):
                return None
            if pick.panic:
                self._metrics.panic.labels(backend.name).inc()
            breaker = backend.states[pick.index].breaker
            if breaker is None or breaker.allow(now):
                return pick.index
            self._metrics.breaker_rejections.labels(
                backend.name, backend.states[pick.index].spec.url
            ).inc()
            refused.add(pick.index)
            available[pick.index] = False
            if len(refused) == len(backend.states):
                return None
        return None

    def _pick_sticky(
        self, backend: BackendRuntime, tried: set[int], key: str, now: float
    ) -> int | None:
        """The endpoint a Triton sequence lives on: the first usable one in its hash order.

        Ranked over every endpoint (not only the usable ones), so a sequence moves only when
        its own endpoint cannot take it; panic (none usable) still goes to its first choice.
        """
        available = backend.availability(now)
        fallback = None
        for i in backend.sticky_order(key):
            if i in tried or i in backend.no_grpc:
                continue
            if fallback is None:
                fallback = i
            breaker = backend.states[i].breaker
            if available[i] and (breaker is None or breaker.allow(now)):
                return i
        if fallback is not None and not any(available):
            self._metrics.panic.labels(backend.name).inc()
            return fallback
        return None

    def _retry_delay(
        self, ex: Exchange, route: RouteRuntime, result: AttemptResult
    ) -> float | None:
        """Seconds to wait before retrying, or None to stop; counts the reason either way."""
        retry = route.retry
        if retry is None:
            return None
        decision = retry.decide(
            ex.attempts,
            result.outcome,
            idempotent=ex.request.method in IDEMPOTENT_METHODS,
            remaining=ex.deadline - self._clock.now(),
            retry_after=result.retry_after,
            rnd=self._rng.random(),
            budget=route.retry_budget,
        )
        self._metrics.retries.labels(route.name, decision.reason.value).inc()
        if ex.trace is not None:
            ex.trace.note(
                "retry",
                retry=decision.retry,
                reason=decision.reason.value,
                delay=decision.delay,
                budget=_balance(route.retry_budget),
            )
        if decision.reason.name == "BUDGET_EXHAUSTED":
            self._metrics.budget_exhausted.labels(route.name, "retry").inc()
        return decision.delay if decision.retry else None

    def _raise_for(self, ex: Exchange, result: AttemptResult) -> NoReturn:
        if result.outcome is Outcome.TIMEOUT:
            raise DeadlineExceeded(f"no answer in time: {result.message}" + _tried_note(ex))
        raise UpstreamUnavailable(f"{result.message}" + _tried_note(ex))


def _no_endpoint(ex: Exchange, backend: BackendRuntime) -> str:
    grpc = ex.request.grpc is not None
    if len(backend.no_grpc if grpc else backend.no_http) == len(backend.states):
        kind = "a grpc address" if grpc else "an HTTP url"
        return f"no endpoint of backend '{backend.name}' has {kind}"
    return f"no usable endpoint in backend '{backend.name}'"


def _observe_first(
    estimator: HedgeDelayEstimator, result: AttemptResult, started: float, now: float
) -> None:
    """Tell an adaptive hedge delay how long a request's first attempt took, when it says so:
    an answer (or the client's error), or a timeout (at least that long). A fast failure
    says nothing about how long an answer takes."""
    if result.acceptable or result.outcome is Outcome.TIMEOUT:
        estimator.observe(now, now - started)


def _balance(budget: TokenBudget | None) -> float | None:
    return round(budget.balance, 3) if budget is not None else None


def _tried_note(ex: Exchange) -> str:
    return f" (attempts: {ex.attempts})" if ex.attempts else ""


__all__ = ["AttemptResult", "AttemptRunner", "TailguardError", "upstream_headers"]
