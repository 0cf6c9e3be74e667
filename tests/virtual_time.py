"""An event loop on virtual time, for exact tests of the data path's timers.

The loop's clock only moves when nothing is ready to run: it then jumps to the next timer.
`asyncio.sleep`, `asyncio.timeout` and `asyncio.wait(timeout=...)` all read that clock, and
so does the gateway code when it is given `VirtualClock` as its `Clock`, so a test of
retries, hedges, per-try timeouts and fallbacks runs in microseconds and sees exact times.
Scripted transports stand in for the network (see `ScriptedTransports`); over real sockets
the same code is tested by the integration suite.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import AttemptFailed
from gateway.policy.compile import EndpointSpec
from gateway.proxy.transport import PoolSpec, UpstreamResponse, no_answer_within
from gateway.resilience.outcome import Outcome, classify_status

T = TypeVar("T")


class VirtualClock:
    """The gateway's `Clock` and the loop's time, in one."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_800_000_000.0 + self.t


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        events: list[Any] = super().select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing can happen")
        self._clock.t += timeout
        return []


class _Loop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_Selector(clock))
        self._virtual = clock

    def time(self) -> float:
        return self._virtual.t


def run_virtual(main: Callable[[VirtualClock], Awaitable[T]]) -> T:
    """Run `main(clock)` to completion on a fresh virtual-time loop."""
    clock = VirtualClock()
    loop = _Loop(clock)
    try:
        return loop.run_until_complete(main(clock))
    finally:
        loop.close()


@dataclass(frozen=True)
class Step:
    """What one attempt on an endpoint does: wait `after` seconds, then answer or fail."""

    after: float = 0.0
    status: int = 200
    body: bytes = b'{"ok": true}'
    fail: Outcome | None = None  # raise AttemptFailed with this outcome instead
    hang: bool = False  # never answer (until cancelled)
    stream: bool = False  # answer as a stream (a held connection) instead of a buffered body


class ScriptedStream:
    """A streamed answer's connection: it must be closed or released exactly once."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.closed = 0
        self.released = 0

    @property
    def settled(self) -> int:
        return self.closed + self.released

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        body, self._body = self._body, b""
        return body

    def close(self) -> None:
        self.closed += 1

    def release(self) -> None:
        self.released += 1


class ScriptedTransport:
    """One endpoint's scripted answers, in order (the last repeats); records what it got."""

    def __init__(self, url: str, pool: PoolSpec, steps: list[Step]) -> None:
        self.url = url
        self.pool = pool
        self._steps = steps
        self.calls: list[tuple[str, str, float]] = []
        self.cancelled = 0
        self.streams: list[ScriptedStream] = []  # every streamed answer it gave

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        # bounded as `H1Transport` bounds an attempt: a TIMEOUT failure, on the loop's clock
        try:
            async with asyncio.timeout(timeout):
                return await self._answer(method, path_qs)
        except TimeoutError:
            assert timeout is not None
            raise AttemptFailed(Outcome.TIMEOUT, no_answer_within(timeout)) from None

    async def _answer(self, method: str, path_qs: str) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        self.calls.append((method, path_qs, loop.time()))
        step = self._steps[min(len(self.calls) - 1, len(self._steps) - 1)]
        try:
            if step.hang:
                await loop.create_future()
            await asyncio.sleep(step.after)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if step.fail is not None:
            raise AttemptFailed(step.fail, f"scripted {step.fail.value}")
        headers_out = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
        if step.stream:
            stream = ScriptedStream(step.body)
            self.streams.append(stream)
            return UpstreamResponse(
                step.status, headers_out, None, stream, classify_status(step.status)
            )
        return UpstreamResponse(
            step.status, headers_out, step.body, None, classify_status(step.status)
        )

    async def get_status(
        self, path: str, timeout: float, expect: Container[int] | None = None
    ) -> int:
        return 200

    async def close(self) -> None:
        return None


class ScriptedTransports:
    """Stands in for `gateway.proxy.transports.Transports`: endpoints by URL, scripted."""

    def __init__(self, scripts: Mapping[str, list[Step]]) -> None:
        self._scripts = scripts
        self.by_url: dict[str, ScriptedTransport] = {}

    def get(self, spec: EndpointSpec, pool: PoolSpec, protocol: str) -> ScriptedTransport:
        t = self.by_url.get(spec.url)
        if t is None:
            t = self.by_url[spec.url] = ScriptedTransport(spec.url, pool, self._scripts[spec.url])
        return t
