"""Canary rollouts over real sockets: a bad canary is rolled back, a good one promoted, sticky holds."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp

from gateway.app import Gateway
from gateway.ctl import render_status
from gateway.sim import SimServer
from gateway.sim.faults import Faults, Latency
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

INTERVAL = 0.4
POLICY = """\
version: 1
backends:
  stable:
    protocol: kserve-v2
    endpoints: [{{url: "{stable}"}}]
  candidate:
    protocol: kserve-v2
    endpoints: [{{url: "{candidate}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split:
      - {{backend: stable, weight: 100}}
      - {{backend: candidate, weight: 0}}
    sticky: {{header: x-user-id}}
    timeout: {timeout}
    canary:
      backend: candidate
      steps: [20, 50, 100]
      interval: {interval}
      gates: {{max_error_rate_increase: 1%, max_p99_ratio: 3, min_samples: 20}}
      max_failed_checks: 2
"""
USERS = 150
# both sides answer in ~5 ms, so scheduling noise on the test host does not decide the p99 gate
STEADY = Faults(latency=Latency(kind="fixed", ms=5))


@dataclass(frozen=True, slots=True)
class Served:
    user: str
    backend: str
    status: int
    weight_before: float
    weight_after: float


class StickyLoad:
    """Steady traffic from USERS sticky users; records which side served whom at which weight."""

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway, concurrency: int = 16) -> None:
        assert gw.listening is not None
        self.served: list[Served] = []
        self._http = http
        self._gw = gw
        self._url = f"{gw.listening.url}/v2/models/classifier/infer"
        self._stop = asyncio.Event()
        self._next = 0
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(concurrency)]

    def _weight(self) -> float:
        analysis = self._gw.canary.analysis("classify")
        assert analysis is not None
        return analysis.weight

    async def _worker(self) -> None:
        while not self._stop.is_set():
            user = f"user-{self._next % USERS}"
            self._next += 1
            before = self._weight()
            async with self._http.post(
                self._url, json=INFER_BODY, headers={"x-user-id": user}
            ) as r:
                await r.read()
                backend = r.headers.get("x-tailguard-backend", "")
                self.served.append(Served(user, backend, r.status, before, self._weight()))

    async def stop(self) -> list[Served]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.served


async def start(
    sims: SimFactory, gateway: GatewayFactory, canary_faults: Faults
) -> tuple[Gateway, SimServer, SimServer]:
    stable = await sims(name="stable", faults=STEADY)
    candidate = await sims(name="candidate", faults=canary_faults)
    gw = await gateway(
        POLICY.format(
            stable=stable.url, candidate=candidate.url, timeout="2s", interval=f"{INTERVAL}s"
        )
    )
    return gw, stable, candidate


async def fresh_interval(http: aiohttp.ClientSession, gw: Gateway) -> None:
    """Pause and resume: judging starts over with traffic already flowing on both sides."""
    assert gw.listening is not None
    for action in ("pause", "resume"):
        async with http.post(f"{gw.listening.admin_url}/admin/canary/classify/{action}") as r:
            assert r.status == 200, await r.text()


async def until_final(gw: Gateway, limit: float = 15.0) -> list[dict[str, object]]:
    """The analysis' own decisions, once the rollout reached PROMOTED or ROLLED_BACK."""
    analysis = gw.canary.analysis("classify")
    assert analysis is not None
    for _ in range(int(limit / 0.05)):
        if analysis.phase.is_terminal:
            break
        await asyncio.sleep(0.05)
    assert analysis.phase.is_terminal, gw.canary.decisions
    return [d for d in gw.canary.decisions if d["verdict"] is not None]


def assert_sticky(served: list[Served]) -> None:
    """While the weight stays put, each user is served by one side only."""
    sides: dict[tuple[float, str], set[str]] = defaultdict(set)
    for s in served:
        if s.status == 200 and s.weight_before == s.weight_after:
            sides[(s.weight_before, s.user)].add(s.backend)
    assert sides
    switched = {k: v for k, v in sides.items() if len(v) > 1}
    assert not switched, switched


async def test_bad_canary_is_rolled_back_within_two_intervals(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, _, candidate = await start(
        sims, gateway, Faults(latency=Latency(kind="fixed", ms=5), error_rate=0.5)
    )
    load = StickyLoad(http, gw)
    await asyncio.sleep(0.1)
    await fresh_interval(http, gw)
    judged = await until_final(gw)
    served = await load.stop()

    # Two checks: the first fails and holds, the second rolls back. An interval with too
    # little traffic to judge (a slow test host) is no check: the analysis waits, by design.
    checks = [d for d in judged if d["verdict"] != "wait"]
    assert [d["action"] for d in checks] == ["hold", "rollback"], judged
    assert [d["verdict"] for d in checks] == ["fail", "fail"]
    assert checks[-1]["weight_before"] == 20.0 and checks[-1]["weight_after"] == 0.0
    for d in checks:
        assert d["canary"]["requests"] >= 20 and d["baseline"]["requests"] >= 20  # type: ignore[index]
        assert "canary error rate" in str(d["reason"])
    for d in judged:
        if d["verdict"] == "wait":
            assert min(d["canary"]["requests"], d["baseline"]["requests"]) < 20  # type: ignore[index]
    assert gw.metrics.canary_verdicts.labels("classify", "rollback")._value.get() == 1
    assert_sticky(served)
    # users who were on the canary are back on the baseline, and no one reaches the canary
    assert {s.backend for s in served if s.weight_before == 20.0} == {"stable", "candidate"}
    taken = candidate.stats.by_kind["infer"]
    again = StickyLoad(http, gw, concurrency=4)
    await asyncio.sleep(0.2)
    after = await again.stop()
    assert after and {s.backend for s in after} == {"stable"}
    assert candidate.stats.by_kind["infer"] == taken

    assert gw.listening is not None
    async with http.get(f"{gw.listening.admin_url}/admin/status") as r:
        status = await r.json()
    canary = status["routes"][0]["canary"]
    assert canary["backend"] == "candidate"
    assert canary["phase"] == "rolled-back" and canary["weight"] == 0.0
    # the last verdict, its reason and when (wall clock, as the rollback's audit entry says)
    last = canary["last_verdict"]
    assert last["verdict"] == "fail" and last["action"] == "rollback"
    assert last["reason"] == checks[-1]["reason"]
    rollback_at = gw.clock.wall() - gw.clock.now() + float(checks[-1]["at"])  # type: ignore[arg-type]
    assert abs(last["time"] - rollback_at) < 1e-3
    # the hold and the rollback are state changes (after the test's pause and resume); waits
    # are not
    steps = [c for c in status["recent_changes"] if c["kind"] == "canary"]
    assert [c["action"] for c in steps] == ["pause", "resume", "hold", "rollback"]
    assert steps[-1]["weight"] == 0.0
    assert "last fail" in render_status(status)
    assert f"classify: fail at {time.strftime('%H:%M:%SZ', time.gmtime(last['time']))}" in (
        render_status(status)
    )


async def test_good_canary_is_promoted_through_every_step(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, stable, candidate = await start(sims, gateway, STEADY)
    load = StickyLoad(http, gw)
    await asyncio.sleep(0.1)
    await fresh_interval(http, gw)
    judged = await until_final(gw)
    served = await load.stop()

    passed = [d for d in judged if d["verdict"] == "pass"]
    assert [d["verdict"] for d in judged if d["verdict"] != "wait"] == ["pass", "pass"], judged
    for d in judged:
        if d["verdict"] == "wait":
            assert min(d["canary"]["requests"], d["baseline"]["requests"]) < 20  # type: ignore[index]
    assert [(d["weight_before"], d["weight_after"]) for d in passed] == [(20, 50), (50, 100)]
    assert [d["action"] for d in passed] == ["promote-step", "promoted"]
    assert all(s.status == 200 for s in served)
    assert_sticky(served)

    # every step saw both sides, and the canary's share grew with the weight
    def share(weight: float) -> float:
        at = [s for s in served if s.weight_before == s.weight_after == weight]
        return sum(s.backend == "candidate" for s in at) / len(at)

    assert 0.05 < share(20.0) < share(50.0) < 1.0
    # a user moved to the canary by a step up never goes back (rendezvous hashing)
    on_canary_at_20 = {
        s.user for s in served if s.weight_before == 20.0 and s.backend == "candidate"
    }
    back = {
        s.user
        for s in served
        if s.weight_before == s.weight_after == 50.0
        and s.user in on_canary_at_20
        and s.backend == "stable"
    }
    assert not back

    served_stable = stable.stats.by_kind["infer"]
    final = StickyLoad(http, gw, concurrency=4)
    await asyncio.sleep(0.2)
    assert {s.backend for s in await final.stop()} == {"candidate"}
    assert stable.stats.by_kind["infer"] == served_stable
    assert candidate.stats.by_kind["infer"] > 0


async def test_operator_actions_and_reload_keep_the_rollout(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw, stable, candidate = await start(sims, gateway, STEADY)
    assert gw.listening is not None
    base = f"{gw.listening.admin_url}/admin/canary/classify"
    analysis = gw.canary.analysis("classify")
    assert analysis is not None

    async with http.post(f"{base}/pause") as r:
        assert r.status == 200
        assert (await r.json())["action"] == "pause"
    # a reload that leaves the canary section alone keeps the rollout as it was
    text = POLICY.format(
        stable=stable.url, candidate=candidate.url, timeout="3s", interval=f"{INTERVAL}s"
    )
    async with http.post(f"{gw.listening.admin_url}/admin/policy?persist=false", data=text) as r:
        assert r.status == 200
    kept = gw.canary.analysis("classify")
    assert kept is analysis and kept.phase.value == "paused" and kept.weight == 20.0
    assert gw.snapshot.routes[0].split.share("candidate") == 0.2

    async with http.post(f"{base}/pause") as r:
        assert r.status == 400  # already paused
        assert "paused" in (await r.json())["error"]["message"]
    async with http.post(f"{base}/resume") as r:
        assert r.status == 200
    async with http.post(f"{base}/rollback") as r:
        assert r.status == 200
        decision = await r.json()
    assert decision["action"] == "operator-rollback" and decision["weight_after"] == 0.0
    assert "loopback" in decision["reason"]
    assert gw.snapshot.routes[0].backends == ("stable",)
    async with http.post(f"{base}/promote") as r:
        assert r.status == 400
        assert "rolled-back" in (await r.json())["error"]["message"]

    # a changed canary section starts a new rollout from the first step
    text = text.replace("steps: [20, 50, 100]", "steps: [10, 100]")
    async with http.post(f"{gw.listening.admin_url}/admin/policy?persist=false", data=text) as r:
        assert r.status == 200
    restarted = gw.canary.analysis("classify")
    assert restarted is not None and restarted.weight == 10.0
    async with http.post(f"{base}/promote") as r:
        assert r.status == 200
    assert gw.snapshot.routes[0].backends == ("candidate",)


RESCUED = """\
version: 1
backends:
  stable: {{protocol: kserve-v2, endpoints: [{{url: "{stable}"}}]}}
  candidate: {{protocol: kserve-v2, endpoints: [{{url: "{candidate}"}}]}}
  small: {{protocol: kserve-v2, endpoints: [{{url: "{small}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: stable, weight: 100}}, {{backend: candidate, weight: 0}}]
    timeout: 2s
    fallback: [{{backend: small, timeout: 500ms}}]
    canary:
      backend: candidate
      steps: [30, 60, 100]
      interval: {interval}s
      gates: {{max_error_rate_increase: 1%, max_p99_ratio: 3, min_samples: 10}}
"""


async def test_a_canary_failure_rescued_by_a_fallback_still_counts_against_it(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    stable = await sims(name="stable", faults=STEADY)
    candidate = await sims(name="candidate", faults=STEADY.replace(error_rate=1.0))
    small = await sims(name="small", faults=STEADY)
    gw = await gateway(
        RESCUED.format(
            stable=stable.url, candidate=candidate.url, small=small.url, interval=INTERVAL
        )
    )
    load = StickyLoad(http, gw)
    decisions = await until_final(gw)
    served = await load.stop()
    # every client got an answer (the backup rescued the canary's failures) ...
    assert served and all(s.status == 200 for s in served)
    assert small.stats.by_kind["infer"] > 0
    # ... and yet the canary was judged on its own failures and rolled back
    analysis = gw.canary.analysis("classify")
    assert analysis is not None and analysis.phase.value == "rolled-back"
    assert any(d["action"] == "rollback" for d in decisions)
