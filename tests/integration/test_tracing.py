"""Spans of real requests: a retried, hedged, fallen-back request; W3C context both ways."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from opentelemetry.sdk.trace import ReadableSpan

from tests.integration.conftest import INFER_BODY, SimFactory, Traced

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"

POLICY = """
version: 1
telemetry:
  tracing: {{endpoint: "http://127.0.0.1:9", sample_ratio: {ratio}}}
backends:
  primary:
    protocol: openai
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}, {{url: "{c}"}}]
  backup:
    protocol: openai
    endpoints: [{{url: "{d}"}}]
routes:
  - name: chat
    match: {{path_prefix: /v1/}}
    split: [{{backend: primary, weight: 100}}]
    timeout: 5s
    idempotent: true
    retries: {{attempts: 3, on: [5xx], backoff: {{base: 1ms, max: 2ms}}}}
    hedging: {{delay: 50ms, max_extra: 1, budget: 100%}}
    fallback:
      - backend: backup
        timeout: 2s
"""


def by_id(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


async def test_the_span_tree_of_a_retried_hedged_request_that_fell_back(
    sims: SimFactory, traced: Traced
) -> None:
    slow = {"latency": {"kind": "fixed", "ms": 300}, "error_rate": 1.0, "error_status": 503}
    a, b = await sims(name="a"), await sims(name="b")
    c, d = await sims(name="c"), await sims(name="d")
    a.faults = a.faults.replace(**slow)
    b.faults = b.faults.replace(**slow)
    c.faults = c.faults.replace(error_rate=1.0, error_status=503)
    gw, exporter = await traced(POLICY.format(a=a.url, b=b.url, c=c.url, d=d.url, ratio="100%"))
    assert gw.listening is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.listening.url}/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "hi there"}]},
            headers={
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01",
                "tracestate": "vendor=opaque",
            },
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["x-tailguard-fallback"] == "backend"
        answer = await r.json()

    spans = exporter.get_finished_spans()
    assert {f"{s.context.trace_id:032x}" for s in spans} == {CLIENT_TRACE}
    ids = by_id(spans)
    (server,) = [
        s for s in spans if s.parent is not None and s.parent.span_id == int(CLIENT_PARENT, 16)
    ]
    assert server.name == "POST chat"
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "chat"
    assert attrs["tailguard.fallback"] == "backend"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "small"
    assert attrs["gen_ai.response.model"] == answer["model"]
    assert attrs["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert (
        tuple(attrs["gen_ai.response.finish_reasons"]) == ("stop",)
        or attrs["gen_ai.response.finish_reasons"]
    )

    attempts = [s for s in spans if s.name.startswith("attempt ")]
    primary = [s for s in attempts if s.name == "attempt primary"]
    backup = [s for s in attempts if s.name == "attempt backup"]
    (fallback,) = [s for s in spans if s.name == "fallback backend"]
    # three primary attempts under the server span: one first, a hedge and a retry
    assert len(primary) == 3
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id for s in primary)
    kinds = sorted(str((s.attributes or {})["tailguard.attempt.kind"]) for s in primary)
    assert kinds == ["first", "hedge", "retry"]
    assert {(s.attributes or {})["tailguard.endpoint"] for s in primary} == {a.url, b.url, c.url}
    assert all((s.attributes or {})["tailguard.attempt.outcome"] == "5xx" for s in primary)
    assert all((s.attributes or {})["tailguard.attempt.winner"] is False for s in primary)
    # the fallback step is a child of the server span; the backup's attempt is its child
    assert fallback.parent is not None and fallback.parent.span_id == server.context.span_id
    assert (fallback.attributes or {})["tailguard.fallback.served"] is True
    (won,) = backup
    assert won.parent is not None and won.parent.span_id == fallback.context.span_id
    assert (won.attributes or {})["tailguard.attempt.winner"] is True
    assert (won.attributes or {})["http.response.status_code"] == 200
    assert ids[won.context.span_id] is won
    events = [e.name for e in server.events]
    assert events.count("attempt") == 4 and "primary_failed" in events and "route" in events


async def test_a_sampled_out_trace_still_propagates_and_records_nothing(
    sims: SimFactory, traced: Traced
) -> None:
    sim = await sims(models=["classifier"])
    gw, exporter = await traced(KSERVE.format(a=sim.url, ratio="0%"))
    assert gw.listening is not None
    url = f"{gw.listening.url}/v2/models/classifier/infer"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json=INFER_BODY, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"}
        ) as r:
            assert r.status == 200
        seen = sim.stats.last
        assert seen is not None
        _, trace_id, parent, flags = seen.headers["traceparent"].split("-")
        # not sampled, still one trace: the same id goes on, under the gateway's own span id
        assert (trace_id, flags) == (CLIENT_TRACE, "00") and parent != CLIENT_PARENT
        async with http.post(url, json=INFER_BODY) as r:
            assert r.status == 200
        assert exporter.get_finished_spans() == ()
        async with http.post(
            url, json=INFER_BODY, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
        ) as r:
            assert r.status == 200
    # parent-based: a client's sampled trace is followed even at a 0% ratio
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["POST classify", "attempt clf"]


KSERVE = """
version: 1
telemetry:
  tracing: {{endpoint: "http://127.0.0.1:9", sample_ratio: {ratio}}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
"""


async def test_each_attempt_carries_its_own_span_context_upstream(
    sims: SimFactory, traced: Traced
) -> None:
    sim = await sims(models=["classifier"])
    gw, exporter = await traced(KSERVE.format(a=sim.url, ratio="100%"))
    assert gw.listening is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.listening.url}/v2/models/classifier/infer",
            json=INFER_BODY,
            headers={
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01",
                "tracestate": "vendor=opaque",
            },
        ) as r,
    ):
        assert r.status == 200
    (attempt,) = [s for s in exporter.get_finished_spans() if s.name == "attempt clf"]
    (server,) = [s for s in exporter.get_finished_spans() if s.name == "POST classify"]
    seen = sim.stats.last
    assert seen is not None
    _, trace_id, parent, flags = seen.headers["traceparent"].split("-")
    assert trace_id == CLIENT_TRACE and flags == "01"
    assert int(parent, 16) == attempt.context.span_id
    assert seen.headers["tracestate"] == "vendor=opaque"
    assert (server.attributes or {})["gen_ai.request.model"] == "classifier"
    assert (attempt.attributes or {})["tailguard.attempt.winner"] is True


EVENTS_POLICY = """
version: 1
telemetry:
  tracing: {{endpoint: "http://127.0.0.1:9", sample_ratio: 100%}}
  access_log: {{path: "{log}"}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
    circuit_breaker: {{failure_rate: 50%, minimum_calls: 4, window: 10s, open_for: 30s}}
routes:
  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}
"""


async def test_state_changes_are_structured_events_with_the_trace_that_caused_them(
    sims: SimFactory, traced: Traced, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from gateway.sim.faults import Faults

    sim = await sims(models=["classifier"])
    sim.faults = Faults(error_rate=1.0, error_status=500)
    log = tmp_path / "access.jsonl"
    gw, _ = await traced(EVENTS_POLICY.format(a=sim.url, log=log))
    assert gw.listening is not None
    traces = []
    for k in range(6):
        trace = f"{k + 1:032x}"
        traces.append(trace)
        async with http.post(
            f"{gw.listening.url}/v2/models/classifier/infer",
            json=INFER_BODY,
            headers={"traceparent": f"00-{trace}-{CLIENT_PARENT}-01"},
        ) as r:
            await r.read()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    events = [x for x in lines if x.get("event") == "state_change"]
    requests = [x for x in lines if "request_id" in x]
    assert len(requests) == 6
    opened = [e for e in events if e["kind"] == "breaker" and e["state"] == "open"]
    assert len(opened) == 1, events
    # the request whose failure opened the breaker is named by its trace
    assert opened[0]["trace_id"] in traces
    assert opened[0]["backend"] == "clf" and opened[0]["time"].endswith("Z")
    # and the same change is on the status page's list
    assert any(c.get("trace_id") == opened[0]["trace_id"] for c in gw.changes)
