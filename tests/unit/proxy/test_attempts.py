"""Retries, hedges, per-try timeouts, deadlines and fallbacks on virtual time: exact times,
exact counts, scripted endpoints."""

from __future__ import annotations

import asyncio
import gc
import random
import socket
import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.clock import MonotonicClock
from gateway.errors import DeadlineExceeded, UpstreamUnavailable
from gateway.policy.compile import Snapshot, compile_policy
from gateway.policy.load import load_policy_text
from gateway.proxy.attempts import AttemptRunner
from gateway.proxy.exchange import Exchange, ProxyRequest
from gateway.proxy.fallback import FallbackStage, ResponseCaches
from gateway.proxy.pipeline import AttemptStage, compose
from gateway.proxy.transport import UpstreamResponse
from gateway.resilience.outcome import Outcome
from gateway.state.memory import MemoryStore
from gateway.telemetry.catalog import Metrics
from tests.virtual_time import ScriptedTransports, Step, VirtualClock, run_virtual

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


def policy(route_extra: str, *, endpoints: str = f"{{url: {A}}}, {{url: {B}}}") -> str:
    return f"""
version: 1
backends:
  clf: {{protocol: kserve-v2, endpoints: [{endpoints}], locality: {{panic_threshold: 0%}}}}
  small: {{protocol: kserve-v2, endpoints: [{{url: {C}}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
{route_extra}
"""


def snapshot_of(text: str) -> Snapshot:
    return compile_policy(load_policy_text(text, "p.yaml"), source="p.yaml", text=text)


def hedged(delay: str, more: str = "") -> Snapshot:
    """An idempotent route over two endpoints, hedged after `delay` with budget to spare."""
    extra = f", {more}" if more else ""
    return snapshot_of(policy(
        "    timeout: 1s\n"
        "    idempotent: true\n"
        f"    hedging: {{delay: {delay}, budget: 100%{extra}}}"
    ))  # fmt: skip


def exchange(snap: Snapshot, clock: VirtualClock, method: str = "POST") -> Exchange:
    req = ProxyRequest(
        method=method,
        path="/v2/models/classifier/infer",
        path_qs="/v2/models/classifier/infer",
        headers=CIMultiDictProxy(CIMultiDict()),
        body=b"{}",
        request_id="r1",
        client_ip="127.0.0.1",
        scheme="http",
        received_at=clock.now(),
    )
    ex = Exchange(req, snap)
    route = snap.routes[0]
    ex.route = route
    ex.backend = snap.backends[route.backends[0]]
    ex.split_backend = ex.backend.name
    ex.deadline = clock.now() + route.timeout
    return ex


def runner(
    clock: VirtualClock, scripts: dict[str, list[Step]]
) -> tuple[AttemptRunner, ScriptedTransports]:
    transports = ScriptedTransports(scripts)
    r = AttemptRunner(transports, Metrics(), clock, random.Random(7), lambda: None)  # type: ignore[arg-type]
    return r, transports


def test_a_per_try_timeout_moves_on_to_the_other_endpoint() -> None:
    snap = snapshot_of(policy(
        "    timeout: 1s\n"
        "    idempotent: true\n"
        "    retries: {attempts: 2, per_try_timeout: 100ms, backoff: {base: 0s, max: 0s}}"
    ))  # fmt: skip

    async def main(clock: VirtualClock) -> None:
        run, net = runner(clock, {A: [Step(hang=True)], B: [Step(after=0.010)]})
        start = clock.now()
        ex = exchange(snap, clock)
        result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
        assert result.outcome is Outcome.SUCCESS
        # whichever endpoint went first, the hanging one cost exactly its per-try timeout
        hung_first = net.by_url.get(A) is not None and net.by_url[A].calls[0][2] == start
        assert clock.now() - start == pytest.approx(0.110 if hung_first else 0.010)
        assert ex.attempts == (2 if hung_first else 1)

    run_virtual(main)


def test_a_hedge_leaves_after_its_delay_and_the_loser_is_cancelled() -> None:
    snap = hedged("50ms")

    async def main(clock: VirtualClock) -> None:
        slow, fast = Step(after=0.5), Step(after=0.020)
        for first, second in ((A, B), (B, A)):
            run, net = runner(clock, {first: [slow], second: [fast]})
            start = clock.now()
            ex = exchange(snap, clock)
            result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            t_first = net.by_url[first].calls[0][2] if first in net.by_url else None
            if t_first == start:
                # the slow one went first: the hedge left at 50 ms and won at 70 ms
                assert clock.now() - start == pytest.approx(0.070)
                assert ex.hedged and ex.attempts == 2
                assert net.by_url[first].cancelled == 1
            else:
                assert clock.now() - start == pytest.approx(0.020)
                assert not ex.hedged and ex.attempts == 1
            assert result.outcome is Outcome.SUCCESS

    run_virtual(main)


def test_a_client_that_leaves_mid_race_cancels_the_first_attempt_and_the_hedges() -> None:
    snap = hedged("50ms")

    async def main(clock: VirtualClock) -> None:
        run, net = runner(clock, {A: [Step(after=0.5)], B: [Step(after=0.5)]})
        ex = exchange(snap, clock)
        task = asyncio.ensure_future(run.run(ex, ex.route, ex.backend))  # type: ignore[arg-type]
        await asyncio.sleep(0.080)  # the hedge left at 50 ms; both are in flight
        assert ex.attempts == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sum(net.by_url[u].cancelled for u in (A, B)) == 2

    run_virtual(main)


def test_a_first_attempt_that_fails_leaves_the_hedge_to_answer() -> None:
    snap = hedged("50ms")

    async def main(clock: VirtualClock) -> None:
        for first, second in ((A, B), (B, A)):
            run, net = runner(
                clock, {first: [Step(after=0.100, status=503)], second: [Step(after=0.100)]}
            )
            start = clock.now()
            ex = exchange(snap, clock)
            result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            assert result.outcome is Outcome.SUCCESS
            t_first = net.by_url[first].calls[0][2]
            if t_first == start:
                # the failing one went first (503 at 100 ms); the hedge of 50 ms answers at 150
                assert clock.now() - start == pytest.approx(0.150)
                assert ex.hedged and ex.attempts == 2
            else:
                # the good one went first and answers at 100 ms; the hedge (gone at 50 ms to the
                # failing one) is cancelled
                assert clock.now() - start == pytest.approx(0.100)
                assert not ex.hedged and ex.attempts == 2
                assert net.by_url[first].cancelled == 1

    run_virtual(main)


def test_a_winning_hedge_leaves_the_request_task_uncancelled() -> None:
    # the first attempt runs in the request's own task; a hedge that wins cancels that task
    # and takes the cancellation back, so the request goes on (to write its answer) unharmed
    snap = hedged("50ms")

    async def main(clock: VirtualClock) -> None:
        for first, second in ((A, B), (B, A)):
            run, net = runner(clock, {first: [Step(after=0.5)], second: [Step(after=0.020)]})
            me = asyncio.current_task()
            assert me is not None
            start = clock.now()
            ex = exchange(snap, clock)
            result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            assert result.outcome is Outcome.SUCCESS
            assert me.cancelling() == 0
            await asyncio.sleep(0.001)  # a cancellation left pending would land here
            if first in net.by_url and net.by_url[first].calls[0][2] == start:
                assert ex.hedged and net.by_url[first].cancelled == 1
                assert clock.now() - start == pytest.approx(0.071)
            else:
                assert not ex.hedged and ex.attempts == 1

    run_virtual(main)


def test_a_hedge_that_fails_while_the_first_attempt_runs_is_reported_once() -> None:
    snap = hedged("50ms")

    async def main(clock: VirtualClock) -> None:
        seen = 0
        for slow, failing in ((A, B), (B, A)):
            run, net = runner(
                clock, {slow: [Step(after=0.100)], failing: [Step(after=0.010, fail=Outcome.RESET)]}
            )
            start = clock.now()
            ex = exchange(snap, clock)
            try:
                result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            except UpstreamUnavailable:
                # the failing one went first and failed before any hedge was due
                assert slow not in net.by_url and ex.attempts == 1
                continue
            seen += 1
            # the hedge left at 50 ms and failed at 60 ms, while the first answered at 100 ms
            assert result.outcome is Outcome.SUCCESS and not ex.hedged
            assert clock.now() - start == pytest.approx(0.100)
            assert ex.attempts == 2
            m = run._metrics
            reported = [
                m.child(m.attempts, "clf", url, o.value).value
                for url, o in ((slow, Outcome.SUCCESS), (failing, Outcome.RESET),
                               (slow, Outcome.CANCELLED), (failing, Outcome.CANCELLED))
            ]  # fmt: skip
            assert reported == [1, 1, 0, 0]
        assert seen == 1

    run_virtual(main)


def test_a_hedged_request_leaves_no_reference_cycles() -> None:
    # a cycle would leave each request's exchange to the cyclic GC: under load the gateway
    # then pauses for tens of milliseconds every few thousand requests
    snap = hedged("50ms", "max_extra: 2")

    async def main(clock: VirtualClock) -> None:
        scripts: list[dict[str, list[Step]]] = [
            {A: [Step(after=0.010)], B: [Step(after=0.010)]},  # no hedge is due
            {A: [Step(after=0.5)], B: [Step(after=0.020)]},  # the hedge wins (either way)
            {A: [Step(after=0.070)], B: [Step(after=0.5)]},  # the first wins over a hedge
            {A: [Step(after=0.100)], B: [Step(after=0.010, fail=Outcome.RESET)]},
        ]
        for script in scripts:  # warm-up: first calls make lasting objects (metric children)
            run, _ = runner(clock, script)
            ex = exchange(snap, clock)
            await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
        gc.collect()
        gc.disable()
        try:
            for script in scripts * 5:
                run, _ = runner(clock, script)
                ex = exchange(snap, clock)
                await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
                del run, ex
            assert gc.collect() == 0
        finally:
            gc.enable()

    run_virtual(main)


def test_the_newer_of_two_failed_answers_is_passed_on() -> None:
    # the hedge's 502 came while the first attempt still ran; the first attempt's 503 is newer
    snap = hedged("20ms")

    async def main(clock: VirtualClock) -> None:
        seen = 0
        for slow, fast in ((A, B), (B, A)):
            run, net = runner(
                clock,
                {slow: [Step(after=0.100, status=503)], fast: [Step(after=0.010, status=502)]},
            )
            start = clock.now()
            ex = exchange(snap, clock)
            result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            assert result.response is not None
            if net.by_url[fast].calls[0][2] == start:
                assert result.response.status == 502 and ex.attempts == 1  # no hedge was due
                continue
            seen += 1
            assert result.response.status == 503 and ex.attempts == 2
        assert seen == 1

    run_virtual(main)


def test_a_failed_stream_kept_for_the_client_is_closed_when_the_client_leaves() -> None:
    snap = hedged("20ms")

    async def main(clock: VirtualClock) -> None:
        for failing, hanging in ((A, B), (B, A)):
            # a streamed 502 at 30 ms after its start, from whichever attempt goes there; the
            # other endpoint never answers; the client leaves at 60 ms
            run, net = runner(
                clock,
                {failing: [Step(after=0.030, status=502, stream=True)], hanging: [Step(hang=True)]},
            )
            ex = exchange(snap, clock)
            task = asyncio.ensure_future(run.run(ex, ex.route, ex.backend))  # type: ignore[arg-type]
            await asyncio.sleep(0.060)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            streams = net.by_url[failing].streams
            assert len(streams) == 1 and streams[0].settled == 1 and streams[0].closed == 1

    run_virtual(main)


def test_a_failed_stream_kept_during_a_backoff_is_closed_when_the_client_leaves() -> None:
    snap = snapshot_of(policy(
        "    timeout: 5s\n"
        "    idempotent: true\n"
        "    retries: {attempts: 3, backoff: {base: 1s, max: 1s}}",
        endpoints=f"{{url: {A}}}",
    ))  # fmt: skip

    async def main(clock: VirtualClock) -> None:
        run, net = runner(clock, {A: [Step(status=503, stream=True)]})
        ex = exchange(snap, clock)
        task = asyncio.ensure_future(run.run(ex, ex.route, ex.backend))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)  # the first 503 is kept while the retry waits its backoff
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        streams = net.by_url[A].streams  # one per attempt made before the client left
        assert streams and all(x.settled == 1 and x.closed == 1 for x in streams)

    run_virtual(main)


class _AnsweredThenStalled:
    """The first attempt's answer is on a socket at 10 ms, then the loop stalls past the
    hedge delay: the answer and the hedge timer are both due in the same loop turn."""

    def __init__(self) -> None:
        self.calls = 0

    def get(self, spec: object, pool: object, protocol: str) -> _AnsweredThenStalled:
        return self

    async def send(
        self, method: str, path_qs: str, headers: object, body: bytes, timeout: float = 0
    ) -> UpstreamResponse:
        self.calls += 1
        loop = asyncio.get_running_loop()
        r, w = socket.socketpair()
        answered: asyncio.Future[None] = loop.create_future()
        loop.add_reader(r, lambda: answered.done() or answered.set_result(None))

        def answer_then_stall() -> None:
            w.send(b"x")
            time.sleep(0.06)  # a slow callback: the loop is busy past the 50 ms hedge delay

        loop.call_later(0.01, answer_then_stall)
        try:
            await answered
        finally:
            loop.remove_reader(r)
            r.close()
            w.close()
        headers_out = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
        return UpstreamResponse(200, headers_out, b"{}", None, Outcome.SUCCESS)


async def test_a_hedge_due_in_the_turn_the_first_answer_arrived_is_not_sent() -> None:
    snap = snapshot_of(policy(
        "    timeout: 1s\n"
        "    idempotent: true\n"
        "    hedging: {delay: 50ms, budget: 100%}",
        endpoints=f"{{url: {A}}}",
    ))  # fmt: skip
    transport = _AnsweredThenStalled()
    metrics = Metrics()
    clock = MonotonicClock()
    run = AttemptRunner(transport, metrics, clock, random.Random(1), lambda: None)  # type: ignore[arg-type]
    ex = exchange(snap, clock)  # type: ignore[arg-type]
    budget = ex.route.hedge_budget  # type: ignore[union-attr]
    assert budget is not None
    before = budget.balance
    result = await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
    assert result.outcome is Outcome.SUCCESS and transport.calls == 1 and ex.attempts == 1
    assert metrics.hedges_sent.labels("classify")._value.get() == 0
    # the request's own deposit, and no token withdrawn for a hedge that was never needed
    assert budget.balance == before + budget.config.ratio


def test_a_post_is_never_hedged_unless_the_route_says_it_may_be() -> None:
    snap = snapshot_of(policy("    timeout: 1s\n    hedging: {delay: 50ms, budget: 100%}"))

    async def main(clock: VirtualClock) -> None:
        run, _net = runner(clock, {A: [Step(after=0.3)], B: [Step(after=0.3)]})
        start = clock.now()
        ex = exchange(snap, clock)
        await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
        assert clock.now() - start == pytest.approx(0.3)
        assert ex.attempts == 1 and not ex.hedged
        # a GET is idempotent: hedged at 50 ms
        ex = exchange(snap, clock, method="GET")
        await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
        assert ex.attempts == 2

    run_virtual(main)


def test_the_deadline_ends_every_wait() -> None:
    snap = snapshot_of(policy(
        "    timeout: 300ms\n"
        "    idempotent: true\n"
        "    retries: {attempts: 3}\n"
        "    hedging: {delay: 100ms, budget: 100%}"
    ))  # fmt: skip

    async def main(clock: VirtualClock) -> None:
        run, _net = runner(clock, {A: [Step(hang=True)], B: [Step(hang=True)]})
        start = clock.now()
        ex = exchange(snap, clock)
        with pytest.raises(DeadlineExceeded):
            await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
        assert clock.now() - start == pytest.approx(0.3)
        assert ex.attempts == 2  # the first, and one hedge at 100 ms

    run_virtual(main)


def test_fallback_holds_back_its_time_and_answers_from_the_backup() -> None:
    snap = snapshot_of(policy(
        "    timeout: 1s\n"
        "    fallback: [{backend: small, timeout: 300ms}]",
        endpoints=f"{{url: {A}}}",
    ))  # fmt: skip

    async def main(clock: VirtualClock) -> None:
        run, net = runner(clock, {A: [Step(hang=True)], C: [Step(after=0.010)]})
        metrics = Metrics()
        stage = FallbackStage(
            run, ResponseCaches(MemoryStore(clock), metrics, clock), metrics, clock
        )
        handler = compose([stage, AttemptStage(run, clock)], _never)
        start = clock.now()
        ex = exchange(snap, clock)
        answer = await handler(ex)
        # the primary had 1 s minus the backup's 300 ms; the backup then answered in 10 ms
        assert clock.now() - start == pytest.approx(0.710)
        assert ex.fallback == "backend"
        assert answer.response is not None and answer.response.status == 200  # type: ignore[union-attr]
        assert ex.deposited
        budget_deposits = [t.calls for t in net.by_url.values()]
        assert [len(c) for c in budget_deposits] == [1, 1]

    run_virtual(main)


async def _never(ex: Exchange) -> object:  # pragma: no cover - the attempt stage answers
    raise AssertionError("unreachable")


def test_an_adaptive_hedge_leaves_at_the_learned_delay_and_feeds_what_it_overtook() -> None:
    """100 fast first attempts teach the route its delay (20 ms x 1.25 headroom); then a slow
    first attempt is hedged at exactly that delay, and what it overtook is reported: to the
    delay estimator as a first attempt that ran 45 ms, to the balancer as an endpoint that
    took at least that long."""
    text = f"""
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: {A}}}, {{url: {B}}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
    idempotent: true
    hedging: {{delay: adaptive, budget: 10%}}
"""
    snap = snapshot_of(text)
    estimator = snap.routes[0].hedge_delays["clf"]
    states = snap.backends["clf"].states

    async def main(clock: VirtualClock) -> None:
        run, _ = runner(clock, {A: [Step(after=0.020)], B: [Step(after=0.020)]})
        for _ in range(100):
            ex = exchange(snap, clock)
            await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            assert not ex.hedged
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # past the estimator's refresh
        assert estimator.delay(clock.now()) == pytest.approx(0.025)
        hedged = 0
        for slow_url, fast_url in [(A, B), (B, A)] * 4:
            run, net = runner(clock, {slow_url: [Step(after=0.5)], fast_url: [Step(after=0.020)]})
            start = clock.now()
            ex = exchange(snap, clock)
            await run.run(ex, ex.route, ex.backend)  # type: ignore[arg-type]
            slow_first = slow_url in net.by_url and net.by_url[slow_url].calls[0][2] == start
            if slow_first:
                hedged += 1
                assert ex.hedged and clock.now() - start == pytest.approx(0.045)
                assert net.by_url[fast_url].calls[0][2] == pytest.approx(start + 0.025)
                slow = states[0 if slow_url == A else 1]
                assert slow.ewma.value(clock.now()) == pytest.approx(0.045)
                assert max(estimator.window.percentiles((1.0,), clock.now(), 1) or [0]) == (
                    pytest.approx(0.045)
                )
            await asyncio.sleep(0.3)
        assert hedged >= 2

    run_virtual(main)
