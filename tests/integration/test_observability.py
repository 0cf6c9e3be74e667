"""Four layers of metrics and the access log, over real sockets."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

POLICY = """
version: 1
telemetry:
  access_log: {{path: {log}, sample: 100%}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
  chat:
    protocol: openai
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
  - name: chat
    match: {{path_prefix: /v1/}}
    split: [{{backend: chat, weight: 100}}]
"""


def samples(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(gw.metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_service_data_and_infrastructure_metrics_and_the_access_log(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim = await sims(models=["classifier"])
    sim.faults = sim.faults.replace(stream_delay_ms=5)
    log_path = tmp_path / "access.jsonl"
    gw = await gateway(POLICY.format(a=sim.url, log=log_path))
    assert gw.listening is not None
    base = gw.listening.url
    body = json.dumps(INFER_BODY).encode()
    for _ in range(3):
        async with http.post(f"{base}/v2/models/classifier/infer", data=body) as r:
            assert r.status == 200
    async with http.post(f"{base}/v2/models/classifier/infer", data=b"{not json") as r:
        assert r.status == 400
    chunks = 0
    async with http.post(
        f"{base}/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b c d"}]},
    ) as r:
        assert r.status == 200
        async for line in r.content:
            chunks += line.startswith(b"data: ")
    gc.collect()
    for _ in range(100):  # the loop-lag probe wakes every 250 ms
        if samples(gw).get(("tailguard_event_loop_lag_seconds_count", ()), 0):
            break
        await asyncio.sleep(0.05)

    s = samples(gw)
    assert s[("tailguard_time_to_first_byte_seconds_count", (("route", "classify"),))] == 4
    assert s[("tailguard_time_to_first_byte_seconds_count", (("route", "chat"),))] == 1
    assert s[("tailguard_stream_time_to_first_token_seconds_count", (("route", "chat"),))] == 1
    # one gap per chunk after the first; chunks may carry more than one event
    gaps = s[("tailguard_stream_inter_token_seconds_count", (("route", "chat"),))]
    assert 1 <= gaps <= chunks
    assert s[("tailguard_request_body_bytes_count", (("route", "classify"),))] == 4
    assert s[("tailguard_request_body_bytes_sum", (("route", "classify"),))] == 3 * len(body) + 9
    assert (
        s[
            (
                "tailguard_request_validation_failures_total",
                (("reason", "bad_request"), ("route", "classify")),
            )
        ]
        == 1
    )
    assert s[("process_open_fds", ())] > 0
    assert s[("process_resident_memory_bytes", ())] > 0
    assert s[("tailguard_event_loop_lag_seconds_count", ())] >= 1
    assert s[("tailguard_gc_pause_seconds_count", (("generation", "2"),))] >= 1

    await gw.stop()  # closes the access log (the fixture's second stop does nothing new)
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert len(lines) == 5
    assert [x["status"] for x in lines] == [200, 200, 200, 400, 200]
    first = lines[0]
    assert first["route"] == "classify" and first["backend"] == "clf"
    assert first["endpoint"] == sim.url and first["region"] == "local"
    assert first["attempts"] == 1 and first["hedged"] is False and first["fallback"] is None
    assert first["bytes_in"] == len(body) and first["bytes_out"] > 0
    assert first["duration_ms"] > 0 and first["time"].endswith("Z")
    assert len({x["request_id"] for x in lines}) == 5
    assert lines[3]["error"] == "bad_request" and lines[3]["attempts"] == 0
    assert lines[4]["route"] == "chat" and lines[4]["bytes_out"] > 0


CHANGES_POLICY = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}", region: west}}, {{url: "{b}", region: west}}]
    outlier_detection: {{consecutive_failures: 2, max_ejection_percent: 50%}}
    circuit_breaker: {{window_calls: 4, minimum_calls: 2, failure_rate: 50%, open_for: 30s}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    idempotent: true
    retries: {{attempts: 2, on: [5xx], backoff: {{base: 1ms, max: 2ms}}}}
"""


async def test_breaker_opens_and_ejections_are_recent_state_changes(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    good = await sims(models=["classifier"], name="good")
    bad = await sims(models=["classifier"], name="bad")
    bad.faults = bad.faults.replace(error_rate=1.0, error_status=503)
    gw = await gateway(CHANGES_POLICY.format(a=good.url, b=bad.url))
    assert gw.listening is not None
    for _ in range(20):
        async with http.post(
            f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
        ) as r:
            assert r.status == 200  # retried onto the good endpoint
    async with http.get(f"{gw.listening.admin_url}/admin/status") as r:
        changes = (await r.json())["recent_changes"]
    about_bad = [c for c in changes if c.get("endpoint") == bad.url]
    kinds = {(c["kind"], c.get("state")) for c in about_bad}
    assert ("breaker", "open") in kinds, changes
    assert ("ejection", "ejected") in kinds, changes
    ejected = next(c for c in about_bad if c["kind"] == "ejection")
    assert ejected["region"] == "west" and ejected["backend"] == "clf"
    assert "consecutive" in ejected["what"]
    assert all(c.get("endpoint") != good.url for c in changes)
    assert all(isinstance(c["time"], float) for c in changes)


MODELS_POLICY = """
version: 1
telemetry: {{max_label_values: 3}}
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{a}"}}]}}
  chat: {{protocol: openai, endpoints: [{{url: "{a}"}}]}}
routes:
  - {{name: classify, match: {{path_prefix: /v2/models/}}, split: [{{backend: clf, weight: 100}}]}}
  - {{name: chat, match: {{path_prefix: /v1/}}, split: [{{backend: chat, weight: 100}}]}}
"""


async def test_model_and_data_layers_with_the_model_label_bounded(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(MODELS_POLICY.format(a=sim.url))
    assert gw.listening is not None
    base = gw.listening.url
    # a client inventing model names: 40 of them, two requests each
    usage = {"input": 0, "output": 0}
    for i in range(80):
        async with http.post(
            f"{base}/v1/chat/completions",
            json={"model": f"made-up-{i % 40}", "messages": [{"role": "user", "content": "a b"}]},
        ) as r:
            assert r.status == 200
            answer = await r.json()
            usage["input"] += answer["usage"]["prompt_tokens"]
            usage["output"] += answer["usage"]["completion_tokens"]
    for _ in range(3):
        async with http.post(f"{base}/v2/models/classifier/infer", json=INFER_BODY) as r:
            assert r.status == 200

    s = samples(gw)
    models = {
        dict(labels)["model"] for (name, labels) in s if name == "tailguard_model_tokens_total"
    }
    # the first three names seen are kept, every later one is "other"
    assert models == {"made-up-0", "made-up-1", "made-up-2", "other"}
    folds = s[("tailguard_metric_label_folds_total", (("label", "model"),))]
    assert folds == 2 * 37 + 3  # each request naming a model past the limit, KServe's included
    tokens = {
        kind: sum(
            v
            for (name, labels), v in s.items()
            if name == "tailguard_model_tokens_total" and dict(labels)["kind"] == kind
        )
        for kind in ("input", "output")
    }
    assert tokens == usage
    reasons = sum(v for (n, _), v in s.items() if n == "tailguard_model_finish_reasons_total")
    assert reasons == 80
    assert sum(v for (n, _), v in s.items() if n == "tailguard_prompt_tokens_count") == 80
    # the KServe model arrived after the limit was reached: its tensors are under "other"
    tensors = {
        (d["model"], d["side"], d["datatype"], d["shape"]): v
        for (name, labels), v in s.items()
        if name == "tailguard_tensors_total"
        for d in [dict(labels)]
    }
    sent = INFER_BODY["inputs"][0]
    shape = "x".join(str(d) for d in sent["shape"])
    assert tensors[("other", "input", sent["datatype"], shape)] == 3
    assert tensors[("other", "output", "FP32", shape)] == 3  # read through the gzip coding
    assert len({k[0] for k in tensors}) == 1


async def test_model_metrics_off_reads_no_bodies(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    policy = MODELS_POLICY.format(a=sim.url).replace(
        "telemetry: {max_label_values: 3}", "telemetry: {max_label_values: 3, model_metrics: false}"
    )
    gw = await gateway(policy)
    assert gw.listening is not None
    for _ in range(3):
        async with http.post(
            f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
        ) as r:
            assert r.status == 200
    s = samples(gw)
    assert not [n for (n, _), v in s.items() if n == "tailguard_tensors_total" and v]
    # the other layers still count every request
    assert sum(v for (n, _), v in s.items() if n == "tailguard_request_body_bytes_count") == 3
