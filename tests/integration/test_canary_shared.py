"""Two replicas on one Redis agree on a canary: one decides, the other follows."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from gateway.resilience.canary import CanaryPhase
from gateway.sim.faults import Faults, Latency
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

pytestmark = pytest.mark.redis

POLICY = """\
version: 1
state: {{store: redis, url: "{redis}", key_prefix: "{prefix}", timeout: 50ms}}
backends:
  stable: {{protocol: kserve-v2, endpoints: [{{url: "{stable}"}}]}}
  candidate: {{protocol: kserve-v2, endpoints: [{{url: "{candidate}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: stable, weight: 100}}, {{backend: candidate, weight: 0}}]
    timeout: 2s
    canary:
      backend: candidate
      steps: [30, 60, 100]
      interval: 400ms
      gates: {{max_error_rate_increase: 1%, max_p99_ratio: 3, min_samples: 10}}
      max_failed_checks: 2
"""


async def test_one_replica_decides_and_the_other_follows(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession, redis_url: str
) -> None:
    steady = Faults(latency=Latency(kind="fixed", ms=3))
    stable = await sims(models=["classifier"])
    candidate = await sims(models=["classifier"])
    stable.faults = steady
    candidate.faults = steady.replace(error_rate=0.3, error_status=500)
    policy = POLICY.format(
        redis=redis_url, prefix=f"c{os.urandom(4).hex()}:", stable=stable.url,
        candidate=candidate.url,
    )  # fmt: skip
    one = await gateway(policy)
    two = await gateway(policy)
    replicas = [one, two]
    stop = asyncio.Event()

    async def load(target: str) -> None:
        while not stop.is_set():
            async with http.post(target + "/v2/models/classifier/infer", json=INFER_BODY) as r:
                await r.read()

    workers = [
        asyncio.ensure_future(load(gw.listening.url))
        for gw in replicas
        for _ in range(4)
        if gw.listening is not None
    ]
    try:
        for _ in range(200):
            phases = [gw.canary.analysis("classify").phase for gw in replicas]  # type: ignore[union-attr]
            if all(p is CanaryPhase.ROLLED_BACK for p in phases):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    phases = [gw.canary.analysis("classify").phase for gw in replicas]  # type: ignore[union-attr]
    assert phases == [CanaryPhase.ROLLED_BACK, CanaryPhase.ROLLED_BACK]
    for gw in replicas:
        assert gw.snapshot.routes[0].split.share("candidate") == 0.0
    # exactly one replica judged; the other only followed its published state
    deciders = [
        gw for gw in replicas if any(d["action"] == "rollback" for d in gw.canary.decisions)
    ]
    assert len(deciders) == 1
