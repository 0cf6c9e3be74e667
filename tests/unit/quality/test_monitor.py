"""The worker on a fake clock: captures over time, scores, operator mistakes, canary outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import Gateway
from gateway.clock import FakeClock
from gateway.errors import ClientError, RouteNotFound
from gateway.proxy.exchange import Exchange, ProxyRequest
from gateway.proxy.transport import UpstreamResponse
from gateway.resilience.outcome import Outcome

POLICY = """\
version: 1
backends:
  a: {protocol: kserve-v2, endpoints: [{url: "http://127.0.0.1:9"}]}
  b: {protocol: kserve-v2, endpoints: [{url: "http://127.0.0.1:10"}]}
routes:
  - name: r
    match: {model: m}
    split: [{backend: a, weight: 100}, {backend: b, weight: 0}]
    quality: {sample: 100%, window: 1m, min_samples: 50}
    canary: {backend: b, gates: {max_output_drift: 0.1, min_output_samples: 5}}
  - name: plain
    match: {path_prefix: /}
    split: [{backend: a, weight: 100}]
"""
HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


def answered(gw: Gateway, backend: str, cls: int, rng: random.Random) -> Exchange:
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.0]}]}
    ).encode()
    probs = [0.1, 0.1, 0.1]
    probs[cls] = 0.8
    out = json.dumps(
        {"outputs": [{"name": "P", "shape": [1, 3], "datatype": "FP32", "data": probs}]}
    ).encode()
    req = ProxyRequest(
        "POST", "/v2/models/m/infer", "/v2/models/m/infer", HEADERS, body, "i", "", "http", 0.0
    )
    ex = Exchange(req, gw.snapshot, "kserve-v2")
    ex.route = gw.snapshot.routes[0]
    ex.backend = gw.snapshot.backends[backend]
    ex.attempts, ex.status = 1, 200
    ex.response = UpstreamResponse(200, HEADERS, out, None, Outcome.SUCCESS)
    return ex


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return Gateway(path, clock=FakeClock(), rng=random.Random(1))


def test_a_capture_over_time_becomes_the_reference_and_scores_follow(gw: Gateway) -> None:
    clock = gw.clock
    assert isinstance(clock, FakeClock)
    q = gw.quality
    rng = random.Random(2)
    q.capture("r", "a", 10.0, "test")
    for _ in range(60):
        q.tap.observe(answered(gw, "a", 0, rng), 0.01)
    q.drain(clock.now())
    q.score(clock.now())
    assert q.state()["routes"]["r"]["quality"]["backends"]["a"]["reference"] is None
    clock.advance(11)
    q.score(clock.now())
    state = q.state()["routes"]["r"]["quality"]["backends"]["a"]
    assert state["reference"]["exchanges"] == 60 and state["capturing"] is None
    scores = {(s["feature"], s["stat"]): s for s in state["scores"]}
    assert scores["output.P.class", "js"]["value"] == 0.0  # the same traffic is its own window
    # class 2 from now on: after the old window slides out, the class drifts fully
    clock.advance(120)
    for _ in range(60):
        q.tap.observe(answered(gw, "a", 2, rng), 0.01)
    q.drain(clock.now())
    q.score(clock.now())
    state = q.state()["routes"]["r"]["quality"]["backends"]["a"]
    assert state["drifted"] == ["output.P.class"]
    assert gw.metrics.drift_score.labels("r", "a", "output.P.class", "js")._value.get() == 1.0
    q.clear("r", None, "test")
    assert q.state()["routes"]["r"]["quality"]["backends"]["a"]["scores"] == []


def test_operator_mistakes_are_client_errors(gw: Gateway) -> None:
    q = gw.quality
    with pytest.raises(RouteNotFound):
        q.capture("nope", None, None, "t")
    with pytest.raises(ClientError, match="no quality section"):
        q.capture("plain", None, None, "t")
    with pytest.raises(ClientError, match="does not serve route"):
        q.capture("r", "c", None, "t")
    with pytest.raises(ClientError, match="no profiled traffic yet"):
        q.capture("r", None, None, "t")
    with pytest.raises(ClientError, match="between 0 and"):
        q.capture("r", None, 0.0, "t")
    with pytest.raises(ClientError, match="not a reference profile"):
        q.load("r", "a", b"{}", "t")
    with pytest.raises(RouteNotFound):
        q.export("r", "a")


def test_sampled_outputs_feed_the_canarys_output_gate(gw: Gateway) -> None:
    rng = random.Random(3)
    for _ in range(10):
        gw.quality.tap.observe(answered(gw, "a", 0, rng), 0.01)
        gw.quality.tap.observe(answered(gw, "b", 1, rng), 0.01)
    gw.quality.drain(gw.clock.now())
    analysis = gw.canary.analysis("r")
    assert analysis is not None
    canary, baseline = analysis.interval_stats()
    assert (canary.outputs, baseline.outputs) == (10, 10)
