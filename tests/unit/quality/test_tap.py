"""The tap keeps a random share of good answers, bounded; windows slide; outputs are knobs."""

from __future__ import annotations

import random

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import compile_text
from gateway.proxy.exchange import Exchange, ProxyRequest
from gateway.proxy.transport import UpstreamResponse
from gateway.quality.features import Features
from gateway.quality.tap import QualityTap
from gateway.quality.window import ProfileWindow
from gateway.resilience.outcome import Outcome
from gateway.sim.outputs import Outputs
from gateway.telemetry.catalog import Metrics

POLICY = """\
version: 1
backends:
  a: {protocol: kserve-v2, endpoints: [{url: "http://10.0.0.1:8000"}]}
routes:
  - name: r
    match: {path_prefix: /}
    split: [{backend: a, weight: 100}]
    quality: {sample: 20%}
  - name: plain
    match: {path_prefix: /}
    split: [{backend: a, weight: 100}]
"""
HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


def exchange(route: int = 0, status: int = 200, **fields: object) -> Exchange:
    snap = compile_text(POLICY, "p.yaml")
    req = ProxyRequest("POST", "/", "/", HEADERS, b"{}", "id", "127.0.0.1", "http", 0.0)
    ex = Exchange(req, snap, "kserve-v2")
    ex.route = snap.routes[route]
    ex.backend = snap.backends["a"]
    ex.attempts = 1
    ex.status = status
    ex.response = UpstreamResponse(status, HEADERS, b"{}", None, Outcome.SUCCESS)
    for k, v in fields.items():
        setattr(ex, k, v)
    return ex


def test_a_share_of_good_answers_is_kept_and_a_full_queue_drops_and_counts() -> None:
    m = Metrics()
    tap = QualityTap(10_000, random.Random(1).random, m)
    ex = exchange()
    for _ in range(5000):
        tap.observe(ex, 0.01)
    assert tap.kept == pytest.approx(1000, abs=100) and tap.dropped == 0
    small = QualityTap(3, random.Random(1).random, m)
    for _ in range(200):
        small.observe(ex, 0.01)
    assert len(small) == 3 and small.kept == 3 and small.dropped > 20
    assert m.quality_dropped.labels("r", "queue_full")._value.get() == small.dropped
    assert [o.backend for o in small.take(10)] == ["a", "a", "a"] and len(small) == 0


@pytest.mark.parametrize(
    "ex",
    [
        exchange(route=1),  # no quality on the route
        exchange(status=503),
        exchange(attempts=0),  # a cache hit or a local answer
        exchange(fallback="rules"),
        exchange(stream_outcome=Outcome.RESET),
    ],
)
def test_what_is_never_kept(ex: Exchange) -> None:
    tap = QualityTap(100, lambda: 0.0, Metrics())
    tap.observe(ex, 0.01)
    assert tap.kept == 0 and len(tap) == 0


def test_the_window_slides_by_slices() -> None:
    w = ProfileWindow(4.0, 4)
    f = Features(numeric={"x": [1.0]})
    for t in range(10):
        w.add(f, float(t))
    # the running slice (t=9) and the four before it (5..8)
    assert w.profile(9.5).exchanges == 5
    assert w.profile(100.0).exchanges == 0
    with pytest.raises(ValueError):
        ProfileWindow(0.0, 4)


def test_sim_outputs_shift_and_disagree() -> None:
    rng = random.Random(4)
    plain = Outputs(classes=3)
    probs = plain.probabilities([0.9, 0.1, 0.2, 0.1, 0.8, 0.3], [2, 3], rng)
    assert probs is not None and probs["shape"] == [2, 3]
    rows = [probs["data"][0:3], probs["data"][3:6]]
    assert [r.index(max(r)) for r in rows] == [0, 1]
    assert all(abs(sum(r) - 1) < 1e-9 for r in rows)
    biased = Outputs(classes=3, bias=(0.0, 0.0, 5.0)).probabilities([0.9, 0.1, 0.2], [1, 3], rng)
    assert biased is not None and max(biased["data"]) == biased["data"][2]
    flips = 0
    always = Outputs(classes=3, disagree_rate=0.5)
    for _ in range(2000):
        p = always.probabilities([0.9, 0.1, 0.2], [1, 3], rng)
        assert p is not None
        flips += p["data"].index(max(p["data"])) != 0
    assert flips == pytest.approx(1000, abs=100)
    assert Outputs().probabilities([1.0], [1], rng) is None
    for bad in ({"classes": -1}, {"bias": [1, 2]}, {"disagree_rate": 2}, {"colour": 1}):
        with pytest.raises(ValueError):
            Outputs.from_dict(bad)
