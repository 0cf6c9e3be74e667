"""Highly available Redis under load: Sentinel and Cluster fail a master over; the gateway rides it.

Two gateways share a real Sentinel set (master, replica, three sentinels) or a real
three-master cluster (one replica each). Open-loop traffic runs while the master holding
the gateways' keys is SIGKILLed. What must hold: every request is answered (local state
meanwhile), each gateway finds the new master by itself, the shared rate limit and the
canary are shared again afterwards, and no connection or task is left behind.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.resilience.canary import CanaryPhase
from gateway.state.redis import CLIENT_NAME, RedisStore
from tests.integration.conftest import INFER_BODY, SimFactory
from tests.integration.test_sim import eventually
from tests.redis_server import ClusterSet, RedisNode, SentinelSet, redis_binary

pytestmark = [pytest.mark.redis, pytest.mark.slow]

INFER = "/v2/models/classifier/infer"

POLICY = """\
version: 1
state: {{store: redis, url: "{url}", key_prefix: "{prefix}", timeout: 100ms, retry_after: 200ms}}
backends:
  stable: {{protocol: kserve-v2, endpoints: [{{url: "{stable}"}}]}}
  candidate: {{protocol: kserve-v2, endpoints: [{{url: "{candidate}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: stable, weight: 100}}, {{backend: candidate, weight: 0}}]
    timeout: 2s
    rate_limit: {{key: header, header: x-tenant, rate: {rate}/s, burst: {burst}, on_store_error: local}}
    canary: {{backend: candidate, steps: [10, 50], interval: 1h}}
slos:
  avail: {{routes: [classify], availability: {{objective: 99%}}}}
"""
RATE, BURST = 2.0, 20


Topology = SentinelSet | ClusterSet


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    ha: Topology = (
        SentinelSet(redis_binary()) if request.param == "sentinel" else ClusterSet(redis_binary())
    )
    try:
        ha.start()
        yield ha
    finally:
        ha.close()


def named_connections(nodes: list[RedisNode]) -> int:
    """Connections the gateway's clients hold on the live data nodes."""
    count = 0
    for n in nodes:
        if n.alive():
            from tests.redis_server import _command

            text = _command(n.port, "CLIENT", "LIST").decode(errors="replace")
            count += text.count(f"name={CLIENT_NAME} ")
    return count


@pytest.fixture
async def pair(
    topology: Topology, sims: SimFactory, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    stable = await sims(models=["classifier"])
    candidate = await sims(models=["classifier"])
    text = POLICY.format(
        url=topology.url, prefix=f"ha{os.urandom(3).hex()}:", stable=stable.url,
        candidate=candidate.url, rate=RATE, burst=BURST,
    )  # fmt: skip
    gateways = []
    for i in range(2):
        path = tmp_path / f"policy-{i}.yaml"
        path.write_text(text)
        gw = Gateway(path, listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0))
        await gw.start()
        gateways.append(gw)
    try:
        yield gateways[0], gateways[1]
    finally:
        for gw in gateways:
            await gw.stop()


async def burst_allowed(http: aiohttp.ClientSession, gws: tuple[Gateway, Gateway], tenant: str,
                        n: int) -> tuple[int, float]:  # fmt: skip
    """`n` requests, eight at a time, alternating replicas; how many passed, over what time."""
    urls = [gw.listening.url + INFER for gw in gws if gw.listening is not None]
    gate = asyncio.Semaphore(8)

    async def one(k: int) -> int:
        headers = {"x-tenant": tenant}
        async with gate, http.post(urls[k % 2], json=INFER_BODY, headers=headers) as r:
            await r.read()
            return r.status

    t0 = time.monotonic()
    statuses = await asyncio.gather(*(one(k) for k in range(n)))
    elapsed = time.monotonic() - t0
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200), elapsed


def primary(topology: Topology, gw: Gateway) -> RedisNode:
    """The master that holds the gateway's rate-limit buckets (the one worth killing)."""
    if isinstance(topology, SentinelSet):
        port = topology.master_port()
        return next(n for n in topology.nodes if n.port == port)
    store = gw.store
    assert isinstance(store, RedisStore)
    return topology.master_of(store.key("rl:classify:x").encode())


async def kill_and_recover(topology: Topology, pair: tuple[Gateway, Gateway]) -> float:
    """SIGKILL the master holding the buckets; seconds until both gateways share state again."""
    await asyncio.sleep(0.5)
    victim = primary(topology, pair[0])
    killed_at = time.monotonic()
    victim.stop()
    saw_down = False
    async with asyncio.timeout(30):
        while True:
            up = [gw.metrics.store_up.labels("redis")._value.get() for gw in pair]
            saw_down = saw_down or 0 in up
            if saw_down and up == [1, 1]:
                probes = [gw.store.take(f"probe-{os.urandom(2).hex()}", 1.0, 1.0) for gw in pair]
                results = await asyncio.gather(*probes, return_exceptions=True)
                if not any(isinstance(r, BaseException) for r in results):
                    return time.monotonic() - killed_at
            await asyncio.sleep(0.05)


async def test_master_failover_under_load(
    topology: Topology, pair: tuple[Gateway, Gateway], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    tasks_before = len(asyncio.all_tasks())
    await burst_allowed(http, pair, "warm-up", 8)  # connections made, scripts loaded
    # shared from the start: two replicas, one budget
    allowed, elapsed = await burst_allowed(http, pair, "before", 60)
    assert allowed <= BURST + RATE * elapsed + 2, (allowed, elapsed)

    statuses: list[int] = []
    stop = asyncio.Event()

    async def one(k: int) -> None:
        gw = pair[k % 2]
        assert gw.listening is not None
        headers = {"x-tenant": f"load-{k % 100}"}
        try:
            async with http.post(gw.listening.url + INFER, json=INFER_BODY, headers=headers) as r:
                await r.read()
                statuses.append(r.status)
        except aiohttp.ClientError:
            statuses.append(0)

    async def open_loop(rate: float) -> None:
        tasks: list[asyncio.Task[None]] = []
        t0, k = time.monotonic(), 0
        while not stop.is_set():
            tasks.append(asyncio.ensure_future(one(k)))
            k += 1
            await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
        await asyncio.gather(*tasks)

    load = asyncio.ensure_future(open_loop(100.0))
    try:
        recovered_after = await kill_and_recover(topology, pair)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await load
    print(
        f"\n{type(topology).__name__}: {len(statuses)} requests, "
        f"{statuses.count(200)} answered 200, shared state back {recovered_after:.2f}s after "
        f"the kill; local-state decisions: "
        f"{sum(gw.metrics.rate_limit_fallbacks.labels('classify', 'local')._value.get() for gw in pair):g}"
    )
    assert statuses and statuses.count(200) == len(statuses), {
        s: statuses.count(s) for s in set(statuses)
    }
    assert any(
        gw.metrics.rate_limit_fallbacks.labels("classify", "local")._value.get() > 0 for gw in pair
    ), "the outage was served on local state"

    # the shared rate limit holds again: one budget for both replicas
    allowed, elapsed = await burst_allowed(http, pair, "after", 60)
    expected = BURST + RATE * elapsed
    assert expected * 0.9 - 1 <= allowed <= expected * 1.1 + 1, (allowed, expected)

    # SLO budgets are shared again: each replica's whole share, the outage's counts
    # included, reaches the other (one slot per SLO in a cluster)
    for gw in (a, b, a):
        await gw.slo.step()
    own = [
        sum(
            gw.metrics.slo_events.labels("avail", "classify", e)._value.get()
            for e in ("good", "bad")
        )
        for gw in pair
    ]
    totals = [gw.slo.state()["slos"][0]["total"] for gw in pair]  # type: ignore[index]
    assert own[0] > 0 and own[1] > 0
    assert totals == [sum(own), sum(own)], (totals, own)

    # canary decisions are shared again: an operator rollback on one replica reaches the other
    a.canary.act("classify", "rollback", "test")
    t0 = time.monotonic()
    await eventually(lambda: b.canary.analysis("classify").phase is CanaryPhase.ROLLED_BACK, 2.0)  # type: ignore[union-attr]
    print(f"canary rollback followed after {time.monotonic() - t0:.2f}s")

    # nothing leaks: a bounded set of connections while running, none once stopped
    data_nodes = topology.nodes
    assert 0 < named_connections(data_nodes) <= 40
    for gw in pair:
        await gw.stop()
    await eventually(lambda: named_connections(data_nodes) == 0, 5.0)
    assert len(asyncio.all_tasks()) <= tasks_before
