"""Canary controllers of two replicas on one real Redis, each on its own fake clock.

The clocks share wall time but not their monotonic origin, as two hosts do.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from gateway.app import compile_text
from gateway.clock import FakeClock
from gateway.control.canary import CanaryController
from gateway.policy.compile import RouteRuntime, Snapshot
from gateway.resilience.canary import CanaryPhase
from gateway.state.redis import RedisStore
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.catalog import Metrics

pytestmark = pytest.mark.redis

POLICY = """\
version: 1
backends:
  stable: {protocol: http, endpoints: [{url: "http://127.0.0.1:9"}]}
  candidate: {protocol: http, endpoints: [{url: "http://127.0.0.1:10"}]}
routes:
  - name: classify
    match: {path_prefix: /}
    split: [{backend: stable, weight: 100}, {backend: candidate, weight: 0}]
    canary: {backend: candidate, steps: [10, 30, 60], interval: 1s,
             gates: {min_samples: 1}}
"""

WALL = 1_800_000_000.0


class Replica:
    def __init__(self, name: str, monotonic_start: float, url: str, prefix: str) -> None:
        self.clock = FakeClock(start=monotonic_start, wall_start=WALL)
        self.snapshot: Snapshot = compile_text(POLICY, "p.yaml")
        self.store = RedisStore(
            url, clock=self.clock, metrics=Metrics(), timeout=0.5, prefix=prefix
        )
        self.audit = AuditLog(None, self.clock)
        self.canary = CanaryController(
            lambda: self.snapshot, Metrics(), self.clock, self.audit, self.store, name
        )
        self.canary.sync(self.snapshot)

    @property
    def route(self) -> RouteRuntime:
        return self.snapshot.routes[0]

    def weight(self) -> float:
        return float(self.route.split.share("candidate")) * 100

    def feed(self, n: int = 20) -> None:
        for _ in range(n):
            self.canary.record(self.route, "stable", False, 0.01)
            self.canary.record(self.route, "candidate", False, 0.01)

    async def settle(self) -> None:
        # let the fire-and-forget state write land before the other replica reads it
        await self.canary._pending.drain()

    async def close(self) -> None:
        await self.canary.close()
        await self.store.close()


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    prefix = f"cr{os.urandom(4).hex()}:"
    # one host booted an hour ago, the other weeks ago
    a = Replica("a", 3_600.0, redis_url, prefix)
    b = Replica("b", 2_000_000.0, redis_url, prefix)
    yield a, b
    await a.close()
    await b.close()


def advance(*replicas: Replica, seconds: float) -> None:
    for r in replicas:
        r.clock.advance(seconds)


async def test_a_follower_restores_the_interval_on_its_own_clock(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    await a.canary.step()  # a takes the lease
    await b.canary.step()
    advance(a, b, seconds=1.0)
    a.feed()
    await a.canary.step()  # a judges: first step
    await a.settle()
    assert a.weight() == pytest.approx(30)
    await b.canary.step()
    follower = b.canary.analysis("classify")
    assert follower is not None and b.weight() == pytest.approx(30)
    # the next check is one interval away on b's clock, not at a's monotonic time
    assert follower.next_check_at == pytest.approx(b.clock.now() + 1.0)
    assert not follower.due(b.clock.now())


async def test_an_operator_rollback_on_a_follower_is_not_undone_by_the_leader(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    await a.canary.step()
    await b.canary.step()
    advance(a, b, seconds=1.0)
    a.feed()
    await a.canary.step()
    await a.settle()
    await b.canary.step()
    assert a.weight() == pytest.approx(30) and b.weight() == pytest.approx(30)

    b.canary.act("classify", "rollback", "ops@b")
    await b.settle()
    await a.canary.step()  # the leader adopts what the operator decided on b
    advance(a, b, seconds=1.0)
    a.feed()
    await a.canary.step()
    await b.canary.step()
    for r in (a, b):
        analysis = r.canary.analysis("classify")
        assert analysis is not None and analysis.phase is CanaryPhase.ROLLED_BACK
        assert r.weight() == 0.0


async def test_a_follower_takes_over_when_the_leader_dies(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    await a.canary.step()
    await b.canary.step()
    advance(a, b, seconds=1.0)
    a.feed()
    await a.canary.step()
    await a.settle()
    await b.canary.step()
    assert b.weight() == pytest.approx(30)
    # a dies: it stops renewing its lease, which Redis expires on its own clock
    await a.close()
    for _ in range(100):
        if await b.canary._leads(b.route):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the lease never passed to the follower")
    advance(b, seconds=1.0)
    b.feed()
    await b.canary.step()
    assert b.weight() == pytest.approx(60)
    decisions = [d["action"] for d in b.canary.decisions]
    assert decisions and decisions[-1] != "rollback"
