"""The resilience core over real sockets: region death, hangs, client-error storms, outages."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.resilience.breaker import BreakerState
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory


async def _fire(
    http: aiohttp.ClientSession, url: str, n: int, concurrency: int = 8, body: object = INFER_BODY
) -> list[int]:
    """n requests, at most `concurrency` at a time; returns the statuses (0 = client-side error)."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with sem:
            try:
                async with http.post(f"{url}/v2/models/classifier/infer", json=body) as r:
                    await r.read()
                    return r.status
            except aiohttp.ClientError:
                return 0

    return list(await asyncio.gather(*(one() for _ in range(n))))


def infers(*sims: object) -> int:
    return sum(s.stats.by_kind["infer"] for s in sims)  # type: ignore[attr-defined]


TWO_REGIONS = """
version: 1
gateway: {{region: us-east}}
backends:
  clf:
    protocol: kserve-v2
    endpoints:
      - {{url: "{a}", region: us-east}}
      - {{url: "{b}", region: eu-west}}
    health: {{interval: 100ms, idle_interval: 100ms, timeout: 100ms,
              unhealthy_threshold: 2, healthy_threshold: 1}}
    outlier_detection: {{consecutive_failures: 3, interval: 1s, base_ejection: 1s,
                         max_ejection_percent: 50%}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 3, per_try_timeout: 500ms, budget: 20%, non_idempotent: true,
               backoff: {{base: 1ms, max: 5ms}}}}
"""


async def test_region_dies_mid_traffic_and_comes_back(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=["classifier"], region="us-east", name="a")
    b = await sims(models=["classifier"], region="eu-west", name="b")
    gw = await gateway(TWO_REGIONS.format(a=a.url, b=b.url))
    assert gw.listening is not None
    url = gw.listening.url

    before = await _fire(http, url, 200)
    assert before.count(200) == 200
    assert infers(a) == 200 and infers(b) == 0  # local region first

    traffic = asyncio.ensure_future(_fire(http, url, 1000, concurrency=4))
    await asyncio.sleep(0.05)
    await a.die()
    during = await traffic
    assert during.count(200) / len(during) >= 0.999, [s for s in during if s != 200][:5]

    # once the health checks and ejection have seen it, nothing more is sent to A
    backend = gw.snapshot.backends["clf"]
    state_a = backend.states[0]
    assert state_a.health is not None
    for _ in range(100):
        if not state_a.health.healthy:
            break
        await asyncio.sleep(0.02)
    assert not state_a.health.healthy
    tried_a = a.stats.total
    after = await _fire(http, url, 200)
    assert after.count(200) == 200
    assert a.stats.total == tried_a

    await a.revive()
    for _ in range(100):
        if state_a.health.healthy:
            break
        await asyncio.sleep(0.02)
    assert state_a.health.healthy
    served_a = infers(a)
    back = await _fire(http, url, 100)
    assert back.count(200) == 100
    assert infers(a) - served_a == 100  # traffic is local again


HANG = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints:
      - {{url: "{a}"}}
      - {{url: "{b}"}}
    circuit_breaker: {{window_calls: 10, minimum_calls: 4, failure_rate: 50%, open_for: 300ms,
                      half_open_calls: 2}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 400ms
"""


async def test_a_hanging_endpoint_opens_its_breaker_and_recovers(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(HANG.format(a=a.url, b=b.url))
    assert gw.listening is not None
    a.faults = a.faults.replace(hang_rate=1.0)
    breaker = gw.snapshot.backends["clf"].states[0].breaker
    assert breaker is not None

    started = time.monotonic()
    statuses = await _fire(http, gw.listening.url, 40, concurrency=8)
    elapsed = time.monotonic() - started
    # every request ended: an answer from B, or a 504 at the route's deadline; never a hang
    assert set(statuses) <= {200, 504}
    assert statuses.count(504) >= 1
    assert elapsed < 40 * 0.4  # far less than if the hangs had been waited on one by one
    assert breaker.state(gw.clock.now()) is not BreakerState.CLOSED
    hung = a.stats.total
    more = await _fire(http, gw.listening.url, 20)
    assert more.count(200) == 20 and a.stats.total == hung  # open: nothing sent to A

    a.faults = a.faults.replace(hang_rate=0.0)
    await asyncio.sleep(0.35)  # open_for elapses; half-open probes decide
    for _ in range(50):
        await _fire(http, gw.listening.url, 4)
        if breaker.state(gw.clock.now()) is BreakerState.CLOSED:
            break
    assert breaker.state(gw.clock.now()) is BreakerState.CLOSED


STORM = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
    outlier_detection: {{consecutive_failures: 3, interval: 100ms}}
    circuit_breaker: {{window_calls: 20, minimum_calls: 5, failure_rate: 50%}}
routes:
  - name: classify
    match: {{path_prefix: /v2/models/}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
    retries: {{attempts: 3, non_idempotent: true}}
"""


async def test_a_storm_of_client_errors_trips_and_ejects_nothing(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=["classifier"])
    gw = await gateway(STORM.format(a=a.url))
    assert gw.listening is not None
    statuses = []
    for _ in range(10):
        async with http.post(
            f"{gw.listening.url}/v2/models/unknown-model/infer", json=INFER_BODY
        ) as r:
            statuses.append(r.status)
    statuses += await _fire(http, gw.listening.url, 200, body={"inputs": "not a list"})
    assert set(statuses) == {400, 404}
    assert infers(a) + a.stats.by_kind.get("other", 0) >= 200  # they did reach the backend
    backend = gw.snapshot.backends["clf"]
    now = gw.clock.now()
    breaker = backend.states[0].breaker
    assert breaker is not None and breaker.state(now) is BreakerState.CLOSED
    assert backend.outlier is not None and not backend.outlier.ejected(now)
    ok = await _fire(http, gw.listening.url, 20)
    assert ok.count(200) == 20


OUTAGE = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 3, budget: 20%, min_retries: 3, non_idempotent: true,
               backoff: {{base: 1ms, max: 2ms}}}}
"""


async def test_a_total_outage_cannot_multiply_load(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=["classifier"])
    b = await sims(models=["classifier"])
    for s in (a, b):
        s.faults = s.faults.replace(error_rate=1.0, error_status=503)
    gw = await gateway(OUTAGE.format(a=a.url, b=b.url))
    assert gw.listening is not None
    n = 500
    statuses = await _fire(http, gw.listening.url, n)
    assert set(statuses) == {503}
    sent = infers(a, b)
    # attempts: 3 would allow 3x; the budget allows 20 % more plus the 3-token reserve
    assert sent <= (1 + 0.2) * n + 3, sent
    assert sent > n  # and retries did happen while the budget lasted


TAIL = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    idempotent: true
    {hedging}
"""


async def _latencies(http: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    sem = asyncio.Semaphore(4)

    async def one() -> float:
        async with sem:
            t0 = time.perf_counter()
            async with http.post(f"{url}/v2/models/classifier/infer", json=INFER_BODY) as r:
                await r.read()
                assert r.status == 200
            return time.perf_counter() - t0

    return sorted(await asyncio.gather(*(one() for _ in range(n))))


async def test_hedging_cuts_the_tail_for_little_extra_load(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    # a 20 ms fast mode: a busy test machine's own jitter stays well below the 400 ms tail
    tail = {"latency": {"kind": "tail", "ms": 20, "tail_rate": 0.05, "tail_factor": 20}}
    a = await sims(models=["classifier"])
    b = await sims(models=["classifier"])
    from gateway.sim import Faults

    for s in (a, b):
        s.faults = Faults.from_dict(tail)
    plain = await gateway(TAIL.format(a=a.url, b=b.url, hedging=""))
    hedged = await gateway(
        TAIL.format(a=a.url, b=b.url, hedging="hedging: {delay: adaptive, budget: 10%}")
    )
    assert plain.listening is not None and hedged.listening is not None
    n = 600
    # interleave the two so both see the same machine
    lat_plain: list[float] = []
    lat_hedged: list[float] = []
    sent_hedged = 0
    for _ in range(3):
        lat_plain += await _latencies(http, plain.listening.url, n // 3)
        before = infers(a, b)
        lat_hedged += await _latencies(http, hedged.listening.url, n // 3)
        sent_hedged += infers(a, b) - before
    # the hedge budget: 10 % of requests plus its 3-token reserve
    assert sent_hedged <= 1.10 * n + 3, sent_hedged
    lat_plain.sort()
    lat_hedged.sort()
    p99_plain = lat_plain[int(0.99 * len(lat_plain))]
    p99_hedged = lat_hedged[int(0.99 * len(lat_hedged))]
    assert p99_hedged <= 0.5 * p99_plain, (p99_plain, p99_hedged)


SHED = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    admission: {{max_concurrency: 4, queue: 4, queue_timeout: 50ms}}
"""


async def test_shedding_keeps_admitted_requests_fast_and_sheds_fast(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    from gateway.sim import Faults

    a = await sims(models=["classifier"])
    a.faults = Faults.from_dict({"latency": {"kind": "fixed", "ms": 20}})
    gw = await gateway(SHED.format(a=a.url))
    assert gw.listening is not None
    url = gw.listening.url
    results: list[tuple[int, float, str | None]] = []

    async def one() -> None:
        t0 = time.perf_counter()
        async with http.post(f"{url}/v2/models/classifier/infer", json=INFER_BODY) as r:
            await r.read()
            results.append((r.status, time.perf_counter() - t0, r.headers.get("retry-after")))

    await asyncio.gather(*(one() for _ in range(64)))
    ok = sorted(t for s, t, _ in results if s == 200)
    shed = [(t, ra) for s, t, ra in results if s == 503]
    assert ok and shed
    assert len(ok) + len(shed) == 64
    assert all(ra is not None for _, ra in shed)
    assert a.stats.by_kind["infer"] == len(ok)  # shed requests never reached the backend
    # admitted requests waited at most the bounded queue: well within the route's 2 s
    assert ok[-1] < 2.0 * 0.5
    # shed requests were refused no slower than admitted ones were served
    assert max(t for t, _ in shed) <= ok[-1]
