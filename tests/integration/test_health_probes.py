"""Active health checks over real sockets: probes keep one connection, a failed one replaces it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.sim import SimServer
from tests.integration.conftest import GatewayFactory, SimFactory

PROBED = """
version: 1
backends:
  clf:
    protocol: {protocol}
    endpoints: [{{url: "{a}"}}]
    health: {{interval: 20ms, idle_interval: 20ms, timeout: 500ms, jitter: 0%,
              unhealthy_threshold: 2, healthy_threshold: 1}}
routes:
  - name: classify
    match: {{path_prefix: /}}
    split: [{{backend: clf, weight: 100}}]
"""


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def probes(sim: SimServer) -> int:
    return sim.stats.by_kind["health"] + sim.stats.by_kind["other"]


async def test_probes_reuse_one_connection_and_replace_it_after_a_failure(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    a = await sims(models=["classifier"])
    gw = await gateway(PROBED.format(protocol="kserve-v2", a=a.url))
    state = gw.snapshot.backends["clf"].states[0]
    assert state.health is not None

    # a kserve-v2 probe asks /v2/health/ready and /v2/models/classifier/ready: 2 GETs each
    await until(lambda: a.stats.by_kind["health"] >= 40, "20 probes")
    assert a.stats.connections == 1

    kept = a.stats.connections
    asked = a.stats.by_kind["health"]
    a.faults = a.faults.replace(ready=False)  # 400/503 answers: every probe fails
    await until(lambda: not state.health.healthy, "the endpoint turns unhealthy")  # type: ignore[union-attr]
    await until(lambda: a.stats.by_kind["health"] >= asked + 10, "10 failed probes")
    failed = a.stats.by_kind["health"] - asked  # a failing probe stops at its first GET
    # the first failed probe ran on the kept connection; each one after it on a new one
    # (one probe may have been between its two GETs when the answers changed)
    assert failed - 2 <= a.stats.connections - kept <= failed

    a.faults = a.faults.replace(ready=True)
    await until(lambda: state.health.healthy, "the endpoint is healthy again")  # type: ignore[union-attr]
    reopened = a.stats.connections
    seen = a.stats.by_kind["health"]
    await until(lambda: a.stats.by_kind["health"] >= seen + 40, "20 more probes")
    assert a.stats.connections == reopened  # kept again once probes pass


async def test_openai_probes_share_one_connection_too(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    a = await sims(models=["m"])
    await gateway(PROBED.format(protocol="openai", a=a.url))
    await until(lambda: probes(a) >= 30, "30 probes of /v1/models")
    assert a.stats.connections == 1
