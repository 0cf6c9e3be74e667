"""Replicas sharing a real Redis: one rate limit, shared cache, peer news, and Redis loss."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

INFER = "/v2/models/classifier/infer"


def limited_policy(sim_url: str, redis_url: str, prefix: str, rate: str, burst: int) -> str:
    # a generous store timeout: this is about one shared budget, not about a slow Redis (a
    # call that timed out on a loaded test host would be decided on local state)
    return f"""
version: 1
state: {{store: redis, url: "{redis_url}", key_prefix: "{prefix}", timeout: 1s}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{sim_url}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    rate_limit: {{key: header, header: x-tenant, rate: {rate}, burst: {burst}}}
"""


class Replica:
    """`tailguard run` in its own process, on ports picked here."""

    def __init__(self, policy: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy),
             "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
             "--log-level", "warning", "--no-watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{self.admin_port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode() if self.proc.stderr else "")
            await asyncio.sleep(0.05)
        raise RuntimeError("replica did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        r.stop()


async def test_two_gateway_processes_enforce_one_rate_limit(
    sims: SimFactory, redis_url: str, http: aiohttp.ClientSession, tmp_path: Path,
    replicas: list[Replica],
) -> None:  # fmt: skip
    sim = await sims(models=["classifier"])
    policy = tmp_path / "policy.yaml"
    rate, burst = 50.0, 50
    policy.write_text(
        limited_policy(sim.url, redis_url, f"rl{os.urandom(4).hex()}:", f"{rate:g}/s", burst)
    )
    replicas.extend([Replica(policy), Replica(policy)])
    for r in replicas:
        await r.ready(http)

    # open loop, 200 requests per second spread over both replicas, for 3 seconds
    interval, n = 0.005, 600
    statuses: list[int] = []

    async def one(k: int) -> None:
        target = replicas[k % 2].url
        async with http.post(target + INFER, json=INFER_BODY, headers={"x-tenant": "acme"}) as r:
            await r.read()
            statuses.append(r.status)

    start = time.monotonic()
    tasks = []
    for k in range(n):
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(k)))
    sent = time.monotonic() - start
    await asyncio.gather(*tasks)
    answered = time.monotonic() - start
    allowed = statuses.count(200)
    assert statuses.count(429) + allowed == n
    # one budget: the bucket refilled for at least as long as requests were sent and at most
    # until the last answer; each replica alone would have let about twice as many through
    low, high = burst + rate * sent, burst + rate * answered
    assert 0.95 * low <= allowed <= 1.05 * high, (allowed, low, high)
    assert allowed < 1.5 * low  # two budgets would let about 2 x low through


CACHED_AND_LIMITED = """
version: 1
state: {{store: redis, url: "{redis}", key_prefix: "{prefix}", timeout: 20ms, retry_after: 200ms}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
    cache: {{ttl: 0s, stale_if_error: 1h, ignore_fields: [id], methods: [POST]}}
    fallback: [{{cache: true}}]
    rate_limit: {{key: client_ip, rate: 100000/s, burst: 100000, on_store_error: local}}
"""


async def test_redis_loss_costs_no_request_and_shared_state_resumes(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:  # fmt: skip
    sim = await sims(models=["classifier"])
    gw = await gateway(CACHED_AND_LIMITED.format(redis=redis_server.url, prefix="loss:", a=sim.url))
    assert gw.listening is not None
    url = gw.listening.url
    results: list[tuple[int, float]] = []

    async def traffic(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            async with http.post(url + INFER, json=INFER_BODY) as r:
                await r.read()
                results.append((r.status, time.monotonic() - t0))
            await asyncio.sleep(0.005)

    load = asyncio.ensure_future(traffic(3.0))
    await asyncio.sleep(0.8)
    redis_server.stop()
    await asyncio.sleep(1.0)
    redis_server.start()
    await load
    assert results and all(status == 200 for status, _ in results), {s for s, _ in results}
    latencies = sorted(t for _, t in results)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    assert p99 < 1.0  # within the route's timeout: nothing waited on the dead Redis
    m = gw.metrics
    assert m.rate_limit_fallbacks.labels("classify", "local")._value.get() > 0
    # after Redis is back, the gateway uses it again by itself
    for _ in range(100):
        async with http.post(url + INFER, json=INFER_BODY) as r:
            await r.read()
        if m.store_up.labels("redis")._value.get() == 1 and gw.store.available():
            break
        await asyncio.sleep(0.05)
    assert m.store_up.labels("redis")._value.get() == 1
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = await client.keys("loss:rl:classify:*")
        assert keys, "rate-limit buckets live in Redis again"
    finally:
        await client.aclose()


PEERS = """
version: 1
state: {{store: redis, url: "{redis}", key_prefix: "{prefix}", timeout: 50ms, suspect_for: 30s}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 4, failure_rate: 50%, open_for: 30s}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 1s
"""


async def test_a_breaker_opening_on_one_replica_makes_the_endpoint_suspect_on_its_peer(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession, redis_url: str
) -> None:
    a, b = await sims(models=["classifier"]), await sims(models=["classifier"])
    policy = PEERS.format(redis=redis_url, prefix=f"p{os.urandom(4).hex()}:", a=a.url, b=b.url)
    one: Gateway = await gateway(policy)
    two: Gateway = await gateway(policy)
    assert one.listening is not None and two.listening is not None
    await asyncio.sleep(0.3)  # subscriptions are set up in the background
    a.faults = a.faults.replace(error_rate=1.0, error_status=503)
    for _ in range(30):
        async with http.post(one.listening.url + INFER, json=INFER_BODY) as r:
            await r.read()
    state_two = two.snapshot.backends["clf"].states[0]
    for _ in range(100):
        if state_two.suspect_until > two.clock.now():
            break
        await asyncio.sleep(0.02)
    assert state_two.suspect_until > two.clock.now()
    assert two.metrics.peer_events.labels("clf", "breaker-open", "enforced")._value.get() >= 1
    # the peer never sends its own share of failures to find out
    before = a.stats.by_kind["infer"]
    for _ in range(20):
        async with http.post(two.listening.url + INFER, json=INFER_BODY) as r:
            assert r.status == 200
    assert a.stats.by_kind["infer"] == before
