"""Replicas share their SLO budgets through a real Redis, and keep counting when it is gone.

Each gateway runs on its own fake clock (the same wall time); the test calls the SLO
controllers' steps itself, so what is asserted is counts, not timing.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.clock import FakeClock
from gateway.sim.faults import Faults
from gateway.slo.budget import BucketCounts
from tests.integration.conftest import INFER_BODY, SimFactory
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

POLICY = """\
version: 1
state: {{store: redis, url: "{redis}", key_prefix: "{prefix}", timeout: 200ms, retry_after: 100ms}}
backends:
  model: {{protocol: kserve-v2, endpoints: [{{url: "{url}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: model, weight: 100}}]
slos:
  avail:
    routes: [classify]
    availability: {{objective: 99.9%}}
    on_fast_burn: {{min_bad_events: 5, shed: sheddable}}
"""

Replicas = Callable[[str], Awaitable[tuple[Gateway, Gateway]]]


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    started: list[Gateway] = []

    async def make(policy: str) -> tuple[Gateway, Gateway]:
        out = []
        for k in range(2):
            path = tmp_path / f"policy-{k}.yaml"
            path.write_text(textwrap.dedent(policy))
            gw = Gateway(
                path, clock=FakeClock(), listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0)
            )
            await gw.start()
            await gw.slo.close()  # the test steps the SLO controller itself
            started.append(gw)
            out.append(gw)
        return out[0], out[1]

    yield make
    for gw in started:
        await gw.stop()


async def send(http: aiohttp.ClientSession, gw: Gateway, n: int) -> int:
    """`n` requests to one replica; how many failed."""
    assert gw.listening is not None
    failed = 0
    for _ in range(n):
        async with http.post(
            f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
        ) as r:
            await r.read()
            failed += r.status >= 500
    return failed


def seen(gw: Gateway) -> tuple[int, int]:
    slo = gw.slo.state()["slos"][0]  # type: ignore[index]
    return slo["total"], slo["bad"]


async def test_a_replica_judges_the_budget_with_what_the_others_counted(
    sims: SimFactory, replicas: Replicas, http: aiohttp.ClientSession, redis_url: str
) -> None:
    sim = await sims()
    one, two = await replicas(
        POLICY.format(redis=redis_url, prefix=f"s{os.urandom(4).hex()}:", url=sim.url)
    )
    sim.faults = Faults(error_rate=0.5, error_status=500)
    failed = await send(http, one, 100)
    assert 20 < failed < 80
    await one.slo.step()  # uploads its counts
    await two.slo.step()  # reads them back
    assert seen(one) == (100, failed)
    assert seen(two) == (100, failed)  # it served nothing, yet knows the budget burns
    assert two.slo.shed_level("classify") == 0  # and acts on it

    sim.faults = Faults()
    await send(http, two, 60)
    await two.slo.step()
    await one.slo.step()
    assert seen(one) == (160, failed)
    assert seen(two) == (160, failed)
    good = one.metrics.slo_events.labels("avail", "classify", "good").value
    assert good == 100 - failed  # the exported counter stays this replica's own


async def test_counts_made_while_redis_is_down_are_shared_once_it_is_back(
    sims: SimFactory, replicas: Replicas, http: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    sim = await sims()
    one, two = await replicas(
        POLICY.format(redis=redis_server.url, prefix=f"s{os.urandom(4).hex()}:", url=sim.url)
    )
    await send(http, one, 10)
    await one.slo.step()
    await two.slo.step()
    assert seen(two) == (10, 0)

    redis_server.stop()
    await send(http, one, 30)
    await one.slo.step()  # fails to upload: keeps the counts, judges on local ones
    assert seen(one) == (40, 0)
    assert not one.store.available()

    # the private Redis comes back empty (no persistence): the first 10 are gone from it
    redis_server.start()
    for _ in range(3):  # the first call on a pooled connection may find it dead: ticks retry
        for gw in (one, two):
            assert isinstance(gw.clock, FakeClock)
            gw.clock.advance(1.0)  # past state.retry_after: the store is tried again
            await gw.slo.step()
    # one's whole share reached the others again: the 30 counted during the outage and the
    # 10 the emptied store had lost (each replica writes its absolute count per bucket)
    assert seen(two) == (40, 0)
    assert seen(one) == (40, 0)  # and the replica forgot nothing it had counted
    # the outage and the return are state changes on the status page (and structured events)
    store = [c["state"] for c in one.changes if c["kind"] == "store"]
    assert store[0] == "down" and store[-1] == "up", store


async def test_a_share_sent_again_after_a_lost_reply_is_not_counted_twice(
    sims: SimFactory, replicas: Replicas, http: aiohttp.ClientSession, redis_url: str
) -> None:
    sim = await sims()
    one, two = await replicas(
        POLICY.format(redis=redis_url, prefix=f"s{os.urandom(4).hex()}:", url=sim.url)
    )
    await send(http, one, 10)
    await one.slo.step()
    # as after a timeout whose write Redis did apply: the replica cannot tell, so every
    # bucket of that round goes again
    budget = one.slo._slos["avail"].budget
    assert isinstance(one.clock, FakeClock)
    budget.changed_again(
        BucketCounts(ring, n, 0, 0, 0) for ring, n in budget.recent_buckets(one.clock.wall(), 0)
    )
    await one.slo.step()
    await one.slo.step()
    await two.slo.step()
    assert seen(two) == (10, 0)
    assert seen(one) == (10, 0)
