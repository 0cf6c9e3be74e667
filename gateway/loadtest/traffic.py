"""Open-loop traffic: requests leave at their scheduled time, whatever came back.

Latency is measured from each request's *intended* send time, so a gateway that stalls
cannot hide the stall by slowing the generator down (no coordinated omission). When
`concurrency` requests are already in flight, a request that is due is not sent and
not delayed: it is recorded as `DROPPED` by the generator, so an overload shows up in
the results instead of stretching the test.

The schedule (`intended_times`) and the request mix (`RequestMix`) are pure; only
`OpenLoop.run` does I/O. Every request leaves one `RequestRecord`. A request with
generated `inputs` gets a fresh KServe v2 body each time (`InputGenerator`), whose values'
distribution the timeline can move (`RequestMix.shift_inputs`).
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import aiohttp

from gateway.loadtest.scenario import GeneratedInputModel, TrafficModel

__all__ = [
    "InputGenerator",
    "OpenLoop",
    "PreparedRequest",
    "RequestMix",
    "RequestOutcome",
    "RequestRecord",
    "intended_times",
]


class RequestOutcome(enum.Enum):
    OK = "ok"  # a 2xx answer
    HTTP_ERROR = "http_error"  # an answer with another status
    CONNECTION_ERROR = "connection_error"  # no answer: refused, reset, bad body
    TIMEOUT = "timeout"  # no answer within the traffic's timeout
    DROPPED = "dropped"  # never sent: the generator's concurrency cap was reached


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One client request: when it was due, how long until its answer, and who answered.

    `intended` is seconds since the traffic started; `latency` is seconds from `intended`
    to the end of the answer (0 for dropped requests); `status` is 0 without an answer.
    """

    intended: float
    latency: float
    status: int
    outcome: RequestOutcome
    request: str
    backend: str | None = None
    endpoint: str | None = None
    fallback: str | None = None
    sim: str | None = None
    region: str | None = None
    attempts: int = 0
    hedged: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is RequestOutcome.OK

    @property
    def sent(self) -> bool:
        return self.outcome is not RequestOutcome.DROPPED


def intended_times(traffic: TrafficModel) -> Iterator[float]:
    """Send times, in seconds from the start, for the whole duration (evenly spaced per rate).

    With steps, each request is spaced by the rate in force when it is due, and a new
    step starts on time even if the last gap of the previous one would overrun it.
    """
    if traffic.rate is not None:
        n = int(traffic.rate * traffic.duration + 1e-9)
        for i in range(n):
            yield i / traffic.rate
        return
    bounds = [s.at for s in traffic.steps[1:]] + [traffic.duration]
    for step, end in zip(traffic.steps, bounds, strict=True):
        n = int((end - step.at) * step.rate + 1e-9)
        for i in range(n):
            yield step.at + i / step.rate


class InputGenerator:
    """Makes the body of a request with generated inputs: normal values around `mean`.

    `mean` and `stddev` change during a run (the `shift-inputs` action); each body is drawn
    from the caller's random source, so a seeded run sends the same values.
    """

    def __init__(self, spec: GeneratedInputModel) -> None:
        self.spec = spec
        self.mean = spec.mean
        self.stddev = spec.stddev
        self._head = {"name": spec.name, "shape": list(spec.shape), "datatype": spec.datatype}

    def body(self, rng: random.Random) -> bytes:
        mean, sd = self.mean, self.stddev
        data = [round(rng.gauss(mean, sd), 5) for _ in range(self.spec.elements)]
        return json.dumps({"inputs": [{**self._head, "data": data}]},
                          separators=(",", ":")).encode()  # fmt: skip


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request ready to send; `headers` is shared between requests and must not be changed.

    With `inputs`, the body is made per request (`body_for`); otherwise it is `body`.
    """

    name: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    user_header: str | None
    users: int
    inputs: InputGenerator | None = None

    def body_for(self, rng: random.Random) -> bytes | None:
        return self.body if self.inputs is None else self.inputs.body(rng)


class RequestMix:
    """The weighted request list of a scenario, serialized once; `pick` chooses one."""

    def __init__(self, traffic: TrafficModel) -> None:
        self.requests: list[PreparedRequest] = []
        self._cumulative: list[float] = []
        total = 0.0
        for r in traffic.requests:
            headers = dict(r.headers)
            if r.body is not None or r.inputs is not None:
                headers.setdefault("content-type", "application/json")
            self.requests.append(
                PreparedRequest(
                    name=r.name or f"{r.method} {r.path}",
                    method=r.method,
                    path=r.path,
                    body=None if r.body is None else r.body.encode(),
                    headers=headers,
                    user_header=r.user_header.name if r.user_header else None,
                    users=r.user_header.users if r.user_header else 0,
                    inputs=InputGenerator(r.inputs) if r.inputs is not None else None,
                )
            )
            total += r.weight
            self._cumulative.append(total)
        self._total = total

    def shift_inputs(
        self, request: str | None, mean: float | None, stddev: float | None
    ) -> Sequence[str]:
        """Move the distribution of generated inputs (of the request named, else of all);
        returns the names of the requests changed. A value not given stays as it is."""
        changed = []
        for req in self.requests:
            if req.inputs is None or (request is not None and req.name != request):
                continue
            if mean is not None:
                req.inputs.mean = mean
            if stddev is not None:
                req.inputs.stddev = stddev
            changed.append(req.name)
        return changed

    def pick(self, rng: random.Random) -> tuple[PreparedRequest, dict[str, str]]:
        """One request by weight, with its headers (a fresh user id when it has a user header)."""
        if len(self.requests) == 1:
            req = self.requests[0]
        else:
            k = bisect.bisect_right(self._cumulative, rng.random() * self._total)
            req = self.requests[min(k, len(self.requests) - 1)]
        if req.user_header is None:
            return req, req.headers
        return req, {**req.headers, req.user_header: f"user-{rng.randrange(req.users)}"}


class OpenLoop:
    """Drives one scenario's traffic against `base_url`; read `records` when `run` returns.

    `base_url` may be several gateways (replicas): requests go to them in turn, as a
    round-robin load balancer would send them. `sim_of` maps an endpoint URL (the gateway's
    `x-tailguard-endpoint`) to a sim name and region, for answers whose backend did not say
    who it is.
    """

    def __init__(
        self,
        traffic: TrafficModel,
        base_url: str | Sequence[str],
        rng: random.Random,
        *,
        sim_of: Callable[[str], tuple[str, str] | None] = lambda _url: None,
    ) -> None:
        self.traffic = traffic
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.mix = RequestMix(traffic)
        self.rng = rng
        self.sim_of = sim_of
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.sent = 0
        self.dropped = 0
        self.total = sum(1 for _ in intended_times(traffic))

    async def run(self, session: aiohttp.ClientSession, start: float) -> None:
        """Send every request on schedule from loop time `start`; returns when all have ended."""
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.traffic.timeout)
        tasks: set[asyncio.Task[None]] = set()
        cap = self.traffic.concurrency
        urls = self.base_urls
        for k, t in enumerate(intended_times(self.traffic)):
            delay = start + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            req, headers = self.mix.pick(self.rng)
            if self.in_flight >= cap:
                self.dropped += 1
                self.records.append(RequestRecord(t, 0.0, 0, RequestOutcome.DROPPED, req.name))
                continue
            self.sent += 1
            self.in_flight += 1
            body = req.body_for(self.rng)
            task = asyncio.ensure_future(
                self._one(session, urls[k % len(urls)], req, body, headers, start + t, t,
                          timeout, loop)
            )  # fmt: skip
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        req: PreparedRequest,
        body: bytes | None,
        headers: dict[str, str],
        due: float,
        t: float,
        timeout: aiohttp.ClientTimeout,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        try:
            async with session.request(
                req.method, base_url + req.path, data=body, headers=headers,
                timeout=timeout,
            ) as r:  # fmt: skip
                await r.read()
                h = r.headers
                endpoint = h.get("x-tailguard-endpoint")
                sim, region = h.get("x-sim-name"), h.get("x-sim-region")
                if sim is None and endpoint is not None:
                    sim, region = self.sim_of(endpoint) or (None, None)
                attempts = h.get("x-tailguard-attempts", "0")
                self.records.append(
                    RequestRecord(
                        intended=t,
                        latency=loop.time() - due,
                        status=r.status,
                        outcome=RequestOutcome.OK
                        if 200 <= r.status < 300
                        else RequestOutcome.HTTP_ERROR,
                        request=req.name,
                        backend=h.get("x-tailguard-backend"),
                        endpoint=endpoint,
                        fallback=h.get("x-tailguard-fallback"),
                        sim=sim,
                        region=region,
                        attempts=int(attempts) if attempts.isdigit() else 0,
                        hedged=h.get("x-tailguard-hedged") == "true",
                    )
                )
        except TimeoutError:
            self.records.append(
                RequestRecord(t, loop.time() - due, 0, RequestOutcome.TIMEOUT, req.name)
            )
        except (aiohttp.ClientError, OSError):
            self.records.append(
                RequestRecord(t, loop.time() - due, 0, RequestOutcome.CONNECTION_ERROR, req.name)
            )
        finally:
            self.in_flight -= 1
