"""The error-budget policy over real sockets, on a fake clock that the test moves.

Requests go through a real gateway to real simulated backends; time, for the budgets and
the canary analysis, moves only when the test says so, and the control loops are stopped so
that the test calls their ticks itself. Assertions are on counts and states, never on how
long something took.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.clock import FakeClock
from gateway.ctl import render_status
from gateway.resilience.canary import CanaryPhase
from gateway.sim import SimServer
from gateway.sim.faults import Faults
from tests.integration.conftest import INFER_BODY, SimFactory

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
    canary:
      backend: candidate
      steps: [10, 50, 100]
      interval: 10s
      gates: {{max_error_rate_increase: 50%, max_p99_ratio: 100, min_samples: 5}}
slos:
  classify-availability:
    routes: [classify]
    availability: {{objective: 99.9%}}
    on_fast_burn: {{min_bad_events: 5, shed: sheddable}}
"""


class Rig:
    def __init__(
        self, gw: Gateway, clock: FakeClock, stable: SimServer, candidate: SimServer, audit: Path
    ) -> None:
        self.gw, self.clock, self.stable, self.candidate = gw, clock, stable, candidate
        self.audit = audit
        assert gw.listening is not None
        self.url = f"{gw.listening.url}/v2/models/classifier/infer"
        self.admin = gw.listening.admin_url
        self.user = 0

    async def send(
        self, http: aiohttp.ClientSession, n: int, priority: str | None = None
    ) -> dict[int, int]:
        """`n` requests from rotating sticky users; how many got each status."""
        statuses: dict[int, int] = {}

        async def one() -> None:
            self.user += 1
            headers = {"x-user-id": f"user-{self.user % 200}"}
            if priority is not None:
                headers["x-tailguard-priority"] = priority
            async with http.post(self.url, json=INFER_BODY, headers=headers) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

        for _ in range(n // 10):
            await asyncio.gather(*(one() for _ in range(10)))
        return statuses

    @property
    def phase(self) -> CanaryPhase:
        analysis = self.gw.canary.analysis("classify")
        assert analysis is not None
        return analysis.phase

    @property
    def weight(self) -> float:
        analysis = self.gw.canary.analysis("classify")
        assert analysis is not None
        return analysis.weight

    def actions(self) -> list[str]:
        return [str(a["action"]) for a in self.gw.slo.actions]


@pytest.fixture
async def rig(tmp_path: Path, sims: SimFactory) -> AsyncIterator[Rig]:
    stable = await sims(name="stable")
    candidate = await sims(name="candidate")
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY.format(stable=stable.url, candidate=candidate.url)))
    clock = FakeClock()
    audit = tmp_path / "audit.jsonl"
    gw = Gateway(
        path, clock=clock, listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0), audit_log=audit
    )
    await gw.start()
    # the test ticks the controllers itself, at the fake times it chooses
    await gw.canary.close()
    await gw.slo.close()
    gw.canary.tick()  # a first interval with no samples: WAIT, weight stays at the first step
    try:
        yield Rig(gw, clock, stable, candidate, audit)
    finally:
        await gw.stop()


async def test_fast_burn_freezes_the_canary_until_it_subsides(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    gw, clock = rig.gw, rig.clock
    assert rig.weight == 10 and rig.phase is CanaryPhase.PROGRESSING
    # the baseline fails a third of its calls: the canary itself is fine, and would pass
    rig.stable.faults = Faults(error_rate=0.3, error_status=500)
    await rig.send(http, 200)
    gw.slo.tick()
    status = gw.slo.state()["slos"][0]  # type: ignore[index]
    assert status["fast_burn"] is True
    assert rig.phase is CanaryPhase.PAUSED and rig.weight == 10
    assert rig.actions() == ["fast-burn", "freeze", "shed"]

    # a whole interval later the canary would have passed; frozen, it is not judged
    clock.advance(10)
    await rig.send(http, 100)
    gw.canary.tick()
    gw.slo.tick()
    assert rig.phase is CanaryPhase.PAUSED and rig.weight == 10
    promotions = [d for d in gw.canary.decisions if d["action"] == "promote-step"]
    assert promotions == []

    # an operator's resume is undone while the budget still burns
    async with http.post(f"{rig.admin}/admin/canary/classify/resume") as r:
        assert r.status == 200
    gw.slo.tick()
    assert rig.phase is CanaryPhase.PAUSED
    assert rig.actions() == ["fast-burn", "freeze", "shed", "freeze"]

    # the fault is fixed; once the short window holds only good answers, the freeze ends
    rig.stable.faults = Faults()
    clock.advance(301)
    await rig.send(http, 100)
    gw.slo.tick()
    assert rig.phase is CanaryPhase.PROGRESSING
    assert rig.actions()[-3:] == ["fast-burn-over", "release", "unshed"]
    # and the rollout goes on from where it was frozen
    clock.advance(10)
    await rig.send(http, 200)
    gw.canary.tick()
    assert rig.weight == 50

    m = gw.metrics.slo_actions
    assert m.labels("classify", "freeze")._value.get() == 2
    assert m.labels("classify", "release")._value.get() == 1
    audit = [json.loads(line) for line in rig.audit.read_text().splitlines()]
    kinds = [a["event"] for a in audit if str(a["event"]).startswith("slo-")]
    assert kinds == [
        "slo-fast-burn", "slo-freeze", "slo-shed", "slo-freeze",
        "slo-fast-burn-over", "slo-release", "slo-unshed",
    ]  # fmt: skip


async def test_a_canary_causing_the_burn_is_rolled_back(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    rig.candidate.faults = Faults(error_rate=1.0, error_status=500)
    statuses = await rig.send(http, 300)
    assert statuses.get(500, 0) >= 5  # the canary's share of the users fails
    rig.gw.slo.tick()
    assert rig.phase is CanaryPhase.ROLLED_BACK and rig.weight == 0
    assert "rollback" in rig.actions()
    decision = rig.gw.canary.decisions[-1]
    assert decision["action"] == "operator-rollback"
    assert "rolled back by error-budget" in str(decision["reason"])
    # nothing reaches the candidate any more
    before = rig.candidate.stats.total
    assert (await rig.send(http, 100)).get(200) == 100
    assert rig.candidate.stats.total == before


async def test_sheddable_requests_are_shed_while_burning_and_not_counted(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    gw = rig.gw
    rig.stable.faults = Faults(error_rate=0.5, error_status=500)
    await rig.send(http, 200)
    gw.slo.tick()
    assert gw.slo.shed_level("classify") == 0
    counted = gw.slo.state()["slos"][0]["total"]  # type: ignore[index]
    shed = await rig.send(http, 50, priority="sheddable")
    assert shed == {503: 50}
    normal = await rig.send(http, 50, priority="normal")
    assert 503 not in normal and sum(normal.values()) == 50
    gw.slo.tick()
    # the 50 shed requests are the policy's doing: not counted against the SLO
    assert gw.slo.state()["slos"][0]["total"] == counted + 50  # type: ignore[index]
    async with http.post(
        rig.url, json=INFER_BODY, headers={"x-tailguard-priority": "sheddable"}
    ) as r:
        assert r.status == 503 and r.headers["x-tailguard-shed"] == "error-budget"
        assert r.headers["retry-after"] == "1"
        assert r.headers["x-tailguard-error"] == "budget_shed"

    # an operator overrides: shedding and the freeze stop at once, and come back after
    async with http.post(f"{rig.admin}/admin/slo/classify/override", json={"seconds": 60}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["overridden"] is True and body["shed_priority"] is None
    assert gw.slo.shed_level("classify") is None
    assert rig.phase is CanaryPhase.PROGRESSING
    assert (await rig.send(http, 20, priority="sheddable")).get(503, 0) == 0
    rig.clock.advance(61)
    await rig.send(http, 200)
    gw.slo.tick()
    assert gw.slo.shed_level("classify") == 0
    assert "override-ended" in rig.actions()

    # `tailguard status` says what burns and what the policy does about it
    async with http.get(f"{rig.admin}/admin/status") as r:
        text = render_status(await r.json())
    assert "classify-availability" in text and "FAST BURN" in text
    assert "shedding priority <= 0" in text


async def test_client_errors_are_not_counted(rig: Rig, http: aiohttp.ClientSession) -> None:
    async with http.post(
        rig.url, data=b"not json", headers={"content-type": "application/json"}
    ) as r:
        assert r.status == 400
    await rig.send(http, 20)
    rig.gw.slo.tick()
    slo = rig.gw.slo.state()["slos"][0]  # type: ignore[index]
    assert (slo["total"], slo["bad"]) == (20, 0)
    good = rig.gw.metrics.slo_events.labels("classify-availability", "classify", "good").value
    assert good == 20
