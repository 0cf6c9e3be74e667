"""Shadow traffic over real sockets: mirrored after the answer, compared, never returned."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from gateway.sim.faults import Faults, Latency
from gateway.sim.outputs import Outputs
from tests.integration.conftest import GatewayFactory, SimFactory
from tests.integration.test_quality import CLASSES, infer_body, until

POLICY = """\
version: 1
backends:
  primary:
    protocol: kserve-v2
    endpoints: [{{url: "{primary}"}}]
  candidate:
    protocol: kserve-v2
    endpoints: [{{url: "{candidate}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: primary, weight: 100}}]
    retries: {{attempts: 3}}
    shadow: {{backend: candidate, share: {share}, max_concurrency: {limit}, timeout: {timeout}}}
"""


async def send(http: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> list[str]:
    """n requests, `concurrency` at a time; the backends that answered, as the client saw."""
    rng = random.Random(9)
    seen: list[str] = []
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            async with http.post(url, json=infer_body(rng)) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
                assert [o["name"] for o in body["outputs"]] == ["OUTPUT0", "PROBS"]
                seen.append(r.headers["x-tailguard-backend"])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


async def test_a_shadow_that_disagrees_30_percent_is_measured_at_30_percent(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    primary = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES))
    candidate = await sims(
        models=("classifier",), outputs=Outputs(classes=CLASSES, disagree_rate=0.3)
    )
    gw = await gateway(
        POLICY.format(
            primary=primary.url, candidate=candidate.url, share="100%", limit=1000, timeout="2s"
        )
    )
    # the bound is the next test's subject: here no shadow may be skipped as busy, however far
    # the shadow falls behind on a loaded host
    assert gw.listening is not None
    n = 1500
    seen = await send(http, f"{gw.listening.url}/v2/models/classifier/infer", n, 8)
    assert set(seen) == {"primary"}  # a shadow's answer is never the client's
    tally = gw.quality.shadow.tally("classify", "candidate")
    await until(lambda: sum(tally.results.values()) == n, gw=gw)
    assert tally.results == {"answered": n}
    assert tally.rows == n
    disagreement = 1 - tally.agreed / tally.rows
    assert abs(disagreement - 0.3) <= 0.03, disagreement
    stats = tally.to_dict()
    assert stats["mean_score_diff"] is not None and stats["mean_score_diff"] > 0
    assert stats["primary_p50_ms"] is not None and stats["shadow_p50_ms"] is not None
    # nothing was retried or sent twice, and the shadow took no budget of the route
    assert primary.stats.by_model["classifier"] == n
    assert candidate.stats.by_model["classifier"] == n
    text = await (await http.get(f"{gw.listening.admin_url}/metrics")).text()
    compared = next(
        x for x in text.splitlines() if x.startswith("tailguard_shadow_compared_total{")
    )
    agreed = next(x for x in text.splitlines() if x.startswith("tailguard_shadow_agreed_total{"))
    assert float(compared.rsplit(" ", 1)[1]) == n
    assert float(agreed.rsplit(" ", 1)[1]) == tally.agreed
    async with http.get(f"{gw.listening.admin_url}/admin/status") as r:
        shadow = (await r.json())["quality"]["routes"]["classify"]["shadow"]
    assert shadow["agreement"] == round(tally.agreed / n, 4)


async def test_a_slow_or_failing_shadow_is_bounded_and_never_hurts_the_client(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    primary = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES))
    candidate = await sims(
        models=("classifier",), faults=Faults(latency=Latency(kind="fixed", ms=400))
    )
    gw = await gateway(
        POLICY.format(
            primary=primary.url, candidate=candidate.url, share="100%", limit=2, timeout="100ms"
        )
    )
    assert gw.listening is not None
    n = 60
    seen = await send(http, f"{gw.listening.url}/v2/models/classifier/infer", n, 4)
    assert seen == ["primary"] * n
    tally = gw.quality.shadow.tally("classify", "candidate")
    await until(lambda: sum(tally.results.values()) == n, gw=gw)
    # at most 2 in flight: the rest were skipped; the ones sent timed out at 100 ms
    assert set(tally.results) == {"busy", "timeout"}, tally.results
    assert tally.results["timeout"] >= 1 and tally.results["busy"] >= 1
    assert tally.pairs == 0
    assert primary.stats.by_model["classifier"] == n  # no retry, though retries are allowed

    candidate.faults = Faults(error_rate=1.0)
    gw.quality.shadow.tallies.clear()
    await send(http, f"{gw.listening.url}/v2/models/classifier/infer", 10, 1)
    tally = gw.quality.shadow.tally("classify", "candidate")
    await until(lambda: sum(tally.results.values()) == 10, gw=gw)
    assert set(tally.results) <= {"error", "busy"} and tally.results["error"] >= 1
    # the candidate's failures count against nothing: no breaker, no ejection, no retry
    assert primary.stats.by_model["classifier"] == n + 10
