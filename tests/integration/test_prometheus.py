"""A real Prometheus scrapes a real gateway and evaluates the rules `tailguard rules` wrote.

The windows are scaled down with `--time-scale` (a 30-day SLO's 5m window lasts 2.5 s,
its 30m window 15 s), errors are injected in a simulated backend, and the page alert must
fire, then resolve after the fault is cleared. Bounds are stated in scaled windows, not
in seconds of our own choosing. Needs Debian's `prometheus` package (skipped without it,
except under CI=true, where it must be there).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.sim.faults import Faults
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory
from tests.prometheus_tools import Prometheus, require

pytestmark = pytest.mark.slow

SCALE = 1 / 120  # 5m -> 2.5 s, 30m -> 15 s, 1h -> 30 s, 6h -> 3 min
SCRAPE = 0.5
SHORT = 300 * SCALE
MEDIUM = 1800 * SCALE
LONG = 3600 * SCALE
PAGE = "TailguardAvailabilityBudgetFastBurn"

POLICY = """\
version: 1
backends:
  model:
    protocol: kserve-v2
    endpoints: [{{url: "{url}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: model, weight: 100}}]
slos:
  classify-availability:
    routes: [classify]
    availability: {{objective: 99.9%}}
"""


@pytest.fixture
async def prometheus_for(tmp_path: Path) -> AsyncIterator[Any]:
    binary = require("prometheus")
    started: list[Prometheus] = []

    def start(gw: Gateway, rules: Path) -> Prometheus:
        assert gw.listening is not None
        target = f"{gw.listening.admin_host}:{gw.listening.admin_port}"
        p = Prometheus(binary, tmp_path, target, rules=rules, scrape=SCRAPE)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


class Traffic:
    """Steady requests from a few concurrent clients until stopped; counts statuses."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.statuses: dict[int, int] = {}
        self._http, self._url = http, url
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(4)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            async with self._http.post(self._url, json=INFER_BODY) as r:
                await r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def wait_for(check: Any, limit: float, step: float = 0.25) -> float:
    """Poll `check()` until it is true; the seconds it took (fails after `limit`)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < limit, f"not reached within {limit:.1f}s"
        await asyncio.sleep(step)
    return time.monotonic() - start


async def test_the_page_fires_on_injected_errors_and_resolves_after(
    tmp_path: Path,
    sims: SimFactory,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    prometheus_for: Any,
) -> None:
    require("prometheus")
    sim = await sims(name="model")
    gw = await gateway(POLICY.format(url=sim.url))
    policy = gw.policy_path
    rules = tmp_path / "rules.yaml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "rules", str(policy), "--out", str(rules),
        "--time-scale", repr(SCALE), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "[2500ms]" in rules.read_text()  # the 5m window, scaled

    prom = prometheus_for(gw, rules)
    await prom.ready(http)
    assert gw.listening is not None
    traffic = Traffic(http, f"{gw.listening.url}/v2/models/classifier/infer")
    try:

        async def has_ratio() -> bool:
            data = await prom.get(http, "/api/v1/query", query="tailguard:slo_error_ratio:rate5m")
            return bool(data["result"])

        # clean traffic until Prometheus computes the ratio (0): no alert at all meanwhile
        await wait_for(has_ratio, limit=60)
        await asyncio.sleep(LONG / 4)
        assert await prom.alert_state(http, PAGE) is None

        sim.faults = Faults(error_rate=0.5, error_status=500)

        async def firing() -> bool:
            return await prom.alert_state(http, PAGE) == "firing"

        took = await wait_for(firing, limit=LONG)
        # the short window must fill with errors, plus a scrape and an evaluation or two
        assert took < LONG, f"the page took {took:.1f}s (the scaled 1h window is {LONG:g}s)"
        assert traffic.statuses.get(500, 0) > 0

        sim.faults = Faults()

        async def resolved() -> bool:
            return await prom.alert_state(http, PAGE) is None

        cleared = await wait_for(resolved, limit=3 * MEDIUM)
        # it holds while the 30m window (6x pair) still remembers the errors, then resolves
        assert cleared > SHORT, f"resolved after {cleared:.1f}s: before the short window cleared"
        assert cleared < 3 * MEDIUM
        # the gateway's own in-process view agrees that errors were counted
        print(f"page fired {took:.1f}s after the fault, resolved {cleared:.1f}s after the fix")
        bad = gw.metrics.slo_events.labels("classify-availability", "classify", "bad").value
        assert bad == traffic.statuses.get(500, 0)
    finally:
        await traffic.stop()
