"""Latency exemplars: a sampled request's trace id on its histogram bucket, in OpenMetrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from gateway.app import Gateway
from tests.integration.conftest import INFER_BODY, SimFactory, Traced
from tests.prometheus_tools import Prometheus, require

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

POLICY = """
version: 1
telemetry:
  tracing: {{endpoint: "http://127.0.0.1:9", sample_ratio: {ratio}}}
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{url}"}}]}}
routes:
  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}
"""


async def scrape(http: aiohttp.ClientSession, gw: Gateway, accept: str | None) -> tuple[str, str]:
    assert gw.listening is not None
    headers = {"Accept": accept} if accept else {}
    async with http.get(f"{gw.listening.admin_url}/metrics", headers=headers) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


def exemplars(text: str, family: str) -> list[tuple[dict[str, str], str, float]]:
    """(bucket labels, trace id, value) of every exemplar of a histogram family."""
    out = []
    for f in openmetrics_families(text):
        if f.name != family:
            continue
        for s in f.samples:
            if s.exemplar is not None:
                out.append((s.labels, s.exemplar.labels["trace_id"], s.exemplar.value))
    return out


async def test_sampled_requests_leave_their_trace_id_on_latency_buckets_in_openmetrics(
    sims: SimFactory, traced: Traced
) -> None:
    sim = await sims(models=["classifier"])
    gw, exporter = await traced(POLICY.format(url=sim.url, ratio="100%"))
    assert gw.listening is not None
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(
                f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
            ) as r:
                assert r.status == 200
        content_type, text = await scrape(http, gw, OPENMETRICS)
        assert content_type.startswith("application/openmetrics-text")
        traces = {
            f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans() if s.parent is None
        }
        assert len(traces) == 5
        found = exemplars(text, "tailguard_request_duration_seconds")
        # one exemplar per bucket that was hit, the latest there: each names an exported trace
        assert found and {t for _, t, _ in found} <= traces
        for labels, _, value in found:
            assert labels["route"] == "classify" and labels["protocol"] == "http"
            le = float(labels["le"])
            assert 0 < value <= le
        ttfb = exemplars(text, "tailguard_time_to_first_byte_seconds")
        assert ttfb and {t for _, t, _ in ttfb} <= traces

        # the classic text format has no exemplars and still parses
        content_type, classic = await scrape(http, gw, None)
        assert content_type.startswith("text/plain")
        assert "trace_id" not in classic
        assert any(f.name == "tailguard_request_duration_seconds" for f in text_families(classic))


async def test_unsampled_requests_leave_no_exemplar(sims: SimFactory, traced: Traced) -> None:
    sim = await sims(models=["classifier"])
    gw, exporter = await traced(POLICY.format(url=sim.url, ratio="100%"))
    assert gw.listening is not None
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(
                f"{gw.listening.url}/v2/models/classifier/infer",
                json=INFER_BODY,
                headers={"traceparent": unsampled},
            ) as r:
                assert r.status == 200
        _, text = await scrape(http, gw, OPENMETRICS)
    # the client's trace was not sampled: no span exported, so no exemplar may point at it
    assert exporter.get_finished_spans() == ()
    assert exemplars(text, "tailguard_request_duration_seconds") == []


@pytest.mark.slow
async def test_a_real_prometheus_stores_the_exemplars(
    sims: SimFactory, traced: Traced, tmp_path: Path
) -> None:
    binary = require("prometheus")
    sim = await sims(models=["classifier"])
    gw, exporter = await traced(POLICY.format(url=sim.url, ratio="100%"))
    assert gw.listening is not None
    target = f"{gw.listening.admin_host}:{gw.listening.admin_port}"
    prom = Prometheus(
        binary, tmp_path, target, scrape=0.5, flags=["--enable-feature=exemplar-storage"]
    )
    try:
        async with aiohttp.ClientSession() as http:
            await prom.ready(http)
            start = time.time()
            for _ in range(5):
                async with http.post(
                    f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
                ) as r:
                    assert r.status == 200
            traces = {
                f"{s.context.trace_id:032x}"
                for s in exporter.get_finished_spans()
                if s.parent is None
            }
            stored: set[str] = set()
            for _ in range(100):  # a few scrapes
                data = await prom.get(
                    http,
                    "/api/v1/query_exemplars",
                    query="tailguard_request_duration_seconds_bucket",
                    start=str(start - 60),
                    end=str(time.time() + 60),
                )
                stored = {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}
                if stored:
                    break
                await asyncio.sleep(0.2)
            assert stored and stored <= traces
    finally:
        prom.stop()
