"""Data and model quality over real sockets: drift under load, the queue's bound, references."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from typing import Any

import aiohttp

from gateway.app import Gateway
from gateway.sim import SimServer
from gateway.sim.faults import Faults, Latency
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

    def __init__(
        self,
        http: aiohttp.ClientSession,
        gw: Gateway,
        concurrency: int = 8,
        urls: tuple[str, ...] | list[str] = (
            "/v2/models/classifier/infer",
            "/v2/models/control/infer",
        ),
    ) -> None:
        assert gw.listening is not None
        self._urls = [f"{gw.listening.url}{u}" for u in urls]
        self._http = http
        self._stop = asyncio.Event()
        self.statuses: dict[int, int] = {}
        self._tasks = [asyncio.ensure_future(self._worker(i)) for i in range(concurrency)]

    async def _worker(self, i: int) -> None:
        rng = random.Random(i)
        while not self._stop.is_set():
            url = self._urls[i % len(self._urls)]
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


CANARY_POLICY = """\
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
    quality: {{sample: 100%}}
    canary:
      backend: candidate
      steps: [30, 60, 100]
      interval: 0.5s
      gates: {{max_error_rate_increase: 1%, max_p99_ratio: 20, min_samples: 20,
               max_output_drift: 0.2, min_output_samples: 20}}
      max_failed_checks: 2
"""


async def test_a_canary_with_shifted_outputs_and_no_errors_is_rolled_back(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    steady = Faults(latency=Latency(kind="fixed", ms=2))
    stable = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES), faults=steady)
    candidate = await sims(
        models=("classifier",), outputs=Outputs(classes=CLASSES, bias=(3.0,)), faults=steady
    )
    gw = await gateway(CANARY_POLICY.format(stable=stable.url, candidate=candidate.url))
    analysis = gw.canary.analysis("classify")
    assert analysis is not None
    load = Load(http, gw, concurrency=8, urls=["/v2/models/classifier/infer"])
    try:
        await until(lambda: analysis.phase.is_terminal, limit=30, gw=gw)
    finally:
        statuses = await load.stop()
    assert statuses == {200: sum(statuses.values())}  # not one error on either side
    assert analysis.phase.value == "rolled-back"
    judged = [d for d in gw.canary.decisions if d["verdict"] in ("pass", "fail")]
    assert [d["action"] for d in judged][-2:] == ["hold", "rollback"], gw.canary.decisions
    last = judged[-1]
    assert last["canary"]["errors"] == 0 and last["baseline"]["errors"] == 0
    assert last["output_drift"] > 0.2
    assert "output drift" in last["reason"]


CONTRACT_POLICY = """\
version: 1
backends:
  model:
    protocol: kserve-v2
    endpoints: [{{url: "{url}"}}]
routes:
  - name: classify
    match: {{path_prefix: /v2/models/}}
    split: [{{backend: model, weight: 100}}]
    contract: {{metadata_ttl: 1m, fetch_timeout: 1s}}
"""


async def test_inputs_that_break_the_models_metadata_get_a_kserve_400_before_the_backend(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=("classifier",))
    gw = await gateway(CONTRACT_POLICY.format(url=sim.url))
    assert gw.listening is not None
    url = f"{gw.listening.url}/v2/models/classifier/infer"
    good = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    bad = [
        ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
         "unknown_input"),
        ({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]},
         "datatype"),
        ({"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1, 2]}]},
         "shape"),
        ({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]},
         "data_size"),
    ]  # fmt: skip
    for payload, _ in bad:
        async with http.post(url, json=payload) as r:
            assert r.status == 400
            answer = await r.json()
            assert set(answer) == {"error"} and isinstance(answer["error"], str)
            assert r.headers["x-request-id"]
    async with http.post(url, json=good) as r:
        assert r.status == 200, await r.text()
    # encoded bodies are judged on what they decode to, and forwarded as they came
    for payload, status in ((good, 200), (bad[1][0], 400)):
        raw = gzip.compress(json.dumps(payload).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        async with http.post(url, data=raw, headers=headers) as r:
            assert r.status == status, await r.text()
            if status == 400:
                assert r.headers["x-tailguard-error"] == "contract_violation"
    assert sim.stats.by_model["classifier"] == 2  # only the good ones reached the model
    text = await (await http.get(f"{gw.listening.admin_url}/metrics")).text()
    for _, why in bad:
        line = next(
            x for x in text.splitlines()
            if x.startswith("tailguard_contract_rejections_total{") and f'reason="{why}"' in x
        )  # fmt: skip
        assert line.endswith(" 2.0" if why == "datatype" else " 1.0")

    # a model whose metadata cannot be had: let through unchecked, and counted
    async with http.post(f"{gw.listening.url}/v2/models/other/infer", json=good) as r:
        assert r.status == 404  # the backend's own answer
    text = await (await http.get(f"{gw.listening.admin_url}/metrics")).text()
    assert any(
        x.startswith("tailguard_contract_unchecked_total{") and "metadata_unavailable" in x
        for x in text.splitlines()
    )


async def test_references_through_the_ctl_commands(
    sims: SimFactory,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    tmp_path: Any,
    capsys: Any,
) -> None:
    from gateway.cli import main

    sim = await sims(models=("classifier",), outputs=Outputs(classes=CLASSES))
    gw = await gateway(
        DROP_POLICY.format(url=sim.url).replace("quality_queue: 4", "quality_queue: 1024")
    )
    assert gw.listening is not None
    admin = gw.listening.admin_url

    async def ctl(*args: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, ["ctl", "--admin", admin, *args])
        out, err = capsys.readouterr()
        return code, out + err

    code, text = await ctl("quality", "capture", "classify")
    assert code == 1 and "no profiled traffic yet" in text
    rng = random.Random(5)
    url = f"{gw.listening.url}/v2/models/classifier/infer"
    for _ in range(30):
        async with http.post(url, json=infer_body(rng)) as r:
            assert r.status == 200
    await until(lambda: gw.quality.processed == 30, gw=gw)
    code, text = await ctl("quality", "capture", "classify")
    assert code == 0 and "classify/model: reference taken from 30 sampled answers" in text
    saved = tmp_path / "ref.json"
    code, text = await ctl("quality", "export", "classify", "--backend", "model", "-o", str(saved))
    assert code == 0 and saved.exists()
    code, text = await ctl("quality", "clear", "classify")
    assert code == 0 and "cleared for model" in text
    code, text = await ctl("quality", "export", "classify", "--backend", "model", "-o", str(saved))
    assert code == 1 and "no reference" in text
    code, text = await ctl("quality", "load", "classify", str(saved), "--backend", "model")
    assert code == 0 and "reference loaded (30 answers)" in text
    code, text = await ctl("quality", "load", "classify", str(saved), "--backend", "nope")
    assert code == 1 and "does not serve route" in text
    code, text = await ctl("quality", "capture", "classify", "--for", "10m")
    assert code == 0 and "recording the next 600 s" in text
    await until(
        lambda: gw.quality.state()["routes"]["classify"]["quality"]["backends"]["model"]["scores"],
        gw=gw,
    )
    code, text = await ctl("quality", "show", "classify")
    assert code == 0 and "output.PROBS.class" in text and "js" in text
    code, text = await asyncio.to_thread(main, ["status", "--admin", admin]), ""
    out, _ = capsys.readouterr()
    assert code == 0 and "DRIFT" in out and "capturing" in out
