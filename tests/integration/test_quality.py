"""Data and model quality over real sockets: drift under load, the queue's bound, references."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp

from gateway.app import Gateway
from gateway.sim import SimServer
from gateway.sim.outputs import Outputs
from tests.integration.conftest import GatewayFactory, SimFactory

CLASSES = 4
POLICY = """\
version: 1
backends:
  shifting:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
  steady:
    protocol: kserve-v2
    endpoints: [{{url: "{b}"}}]
routes:
  - name: shifted
    match: {{model: classifier}}
    split: [{{backend: shifting, weight: 100}}]
    quality: {{sample: 100%, window: {window}, min_samples: 200, thresholds: {thresholds}}}
  - name: control
    match: {{model: control}}
    split: [{{backend: steady, weight: 100}}]
    quality: {{sample: 100%, window: {window}, min_samples: 200, thresholds: {thresholds}}}
"""


def infer_body(rng: random.Random) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [1, CLASSES], "datatype": "FP32",
             "data": [rng.random() for _ in range(CLASSES)]}
        ]
    }  # fmt: skip


class Load:
    """Steady concurrent traffic of random inputs (one distribution) to both routes."""

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway, concurrency: int = 8) -> None:
        assert gw.listening is not None
        self._urls = [
            f"{gw.listening.url}/v2/models/classifier/infer",
            f"{gw.listening.url}/v2/models/control/infer",
        ]
        self._http = http
        self._stop = asyncio.Event()
        self.statuses: dict[int, int] = {}
        self._tasks = [asyncio.ensure_future(self._worker(i)) for i in range(concurrency)]

    async def _worker(self, i: int) -> None:
        rng = random.Random(i)
        while not self._stop.is_set():
            url = self._urls[i % 2]
            async with self._http.post(url, json=infer_body(rng)) as r:
                await r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1

    async def stop(self) -> dict[int, int]:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.statuses


async def admin(http: aiohttp.ClientSession, gw: Gateway, method: str, path: str, **kw: Any) -> Any:
    assert gw.listening is not None
    async with http.request(method, gw.listening.admin_url + path, **kw) as r:
        assert r.status == 200, await r.text()
        return await r.json(content_type=None)


def scores(gw: Gateway, route: str, backend: str) -> dict[tuple[str, str], dict[str, Any]]:
    state = gw.quality.state()["routes"][route]["quality"]["backends"][backend]
    return {(s["feature"], s["stat"]): s for s in state["scores"]}


async def until(predicate: Any, limit: float = 20.0, gw: Gateway | None = None) -> None:
    for _ in range(int(limit / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached in time: {gw.quality.state() if gw else ''}")


async def test_shifted_outputs_cross_the_drift_threshold_and_the_control_does_not(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES))
    b = await sims(models=("control",), outputs=Outputs(classes=CLASSES))
    window = 3.0
    # Thresholds above the sampling noise of a few hundred values a side (docs/quality.md:
    # KS between samples of 300 and 600 from one distribution exceeds 0.1 about 5 % of the time)
    thresholds = "{psi: 0.25, ks: 0.15, js: 0.15}"
    gw = await gateway(POLICY.format(a=a.url, b=b.url, window=f"{window}s", thresholds=thresholds))
    load = Load(http, gw)
    try:
        await drift_scenario(http, gw, a, load, window)
    finally:
        statuses = await load.stop()
    assert set(statuses) == {200}, statuses


async def drift_scenario(
    http: aiohttp.ClientSession, gw: Gateway, a: SimServer, load: Load, window: float
) -> None:
    # a reference recorded over the next window, on both routes, from the same traffic
    for route in ("shifted", "control"):
        await admin(http, gw, "POST", f"/admin/quality/{route}/capture", json={"for": "5s"})
    await until(
        lambda: all(
            gw.quality.state()["routes"][r]["quality"]["backends"][bk]["reference"]
            for r, bk in (("shifted", "shifting"), ("control", "steady"))
        ),
        gw=gw,
    )
    cls = ("output.PROBS.class", "js")
    # before the shift, both are judged and neither has drifted
    await until(
        lambda: scores(gw, "shifted", "shifting").get(cls, {}).get("value") is not None, gw=gw
    )
    before = scores(gw, "shifted", "shifting")[cls]
    assert not before["drifted"], before

    a.outputs = Outputs(classes=CLASSES, bias=(3.0,))  # class 0 now wins most answers
    await asyncio.sleep(window * 1.25 + 0.3)  # the window slides past the old traffic
    await until(lambda: scores(gw, "shifted", "shifting")[cls]["drifted"], limit=10, gw=gw)

    shifted = scores(gw, "shifted", "shifting")
    control = scores(gw, "control", "steady")
    assert shifted[cls]["value"] > shifted[cls]["threshold"]
    assert shifted["output.PROBS.score", "psi"]["drifted"]  # the winning score rose too
    # the inputs did not change: their scores stay under the thresholds on both routes
    for (feature, stat), s in [*shifted.items(), *control.items()]:
        if feature.startswith("input."):
            assert s["value"] is not None and not s["drifted"], (feature, stat, s)
    assert control[cls]["value"] is not None
    assert not [k for k, s in control.items() if s["drifted"]], control

    text = await (await http.get(f"{gw.listening.admin_url}/metrics")).text()  # type: ignore[union-attr]
    line = next(
        x for x in text.splitlines()
        if x.startswith("tailguard_drift_score{") and 'route="shifted"' in x
        and 'feature="output.PROBS.class"' in x and 'stat="js"' in x
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) > 0.1
    status = await admin(http, gw, "GET", "/admin/status")
    assert status["quality"]["routes"]["shifted"]["backends"]["shifting"]["drifted"]
    assert not status["quality"]["routes"]["control"]["backends"]["steady"]["drifted"]


DROP_POLICY = """\
version: 1
gateway: {{quality_queue: 4}}
backends:
  model:
    protocol: kserve-v2
    endpoints: [{{url: "{url}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: model, weight: 100}}]
    quality: {{sample: 100%}}
"""


async def test_a_full_queue_drops_and_counts_and_every_request_is_answered(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES))
    gw = await gateway(DROP_POLICY.format(url=sim.url))
    assert gw.listening is not None
    url = f"{gw.listening.url}/v2/models/classifier/infer"
    rng = random.Random(3)
    n = 400

    async def one() -> tuple[int, bytes]:
        async with http.post(url, json=infer_body(rng)) as r:
            return r.status, await r.read()

    answers = await asyncio.gather(*(one() for _ in range(n)))
    assert [s for s, _ in answers] == [200] * n
    assert all(b'"PROBS"' in body for _, body in answers)
    tap = gw.quality.tap
    # every answered request was offered (sample 100 %): kept or dropped, none lost or delayed
    assert tap.kept + tap.dropped == n
    assert tap.dropped > 0 and tap.kept >= 4
    assert (await sim_stats(http, sim))["by_kind"]["infer"] == n
    await until(lambda: gw.quality.processed == tap.kept and len(tap) == 0, gw=gw)
    text = await (await http.get(f"{gw.listening.admin_url}/metrics")).text()
    dropped = next(
        x for x in text.splitlines()
        if x.startswith("tailguard_quality_dropped_total{") and 'reason="queue_full"' in x
    )  # fmt: skip
    assert float(dropped.rsplit(" ", 1)[1]) == tap.dropped


async def sim_stats(http: aiohttp.ClientSession, sim: SimServer) -> dict[str, Any]:
    async with http.get(f"{sim.control_url}/_sim/stats") as r:
        data: dict[str, Any] = await r.json()
        return data
