"""Microbenchmark: what data and model quality costs, on the request path and in the worker.

    python loadtests/quality_micro.py [--calls 1000000] [--rate 5000] [--seconds 20] [--rounds 5]

1. Hot path: the exact code the exchange's end runs (ExchangeReporter's check, then
   `QualityTap.observe`) for a route without `quality:` and for one sampling 5 %, timed
   over `--calls` answered exchanges with thread CPU time; reported in ns per request.
2. Worker: `--seconds` of synthetic traffic at `--rate` small KServe v2 requests per second
   (a [1, 4] FP32 input; an answer with OUTPUT0 and a [1, 4] probability output), 5 %
   sampled, handed to the tap and drained by the worker in its 50 ms ticks, with drift
   scored once a second against a captured reference, exactly as the running gateway
   does. Reported as the worker's CPU per second of traffic (share of one core) and per
   profiled exchange.

Medians over `--rounds`. The worker part is measured directly on synthetic exchanges:
this 2-core machine cannot also drive 5,000 req/s through the gateway at the same time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402

from gateway.app import Gateway  # noqa: E402
from gateway.clock import FakeClock  # noqa: E402
from gateway.proxy.exchange import Exchange, ProxyRequest  # noqa: E402
from gateway.proxy.transport import UpstreamResponse  # noqa: E402
from gateway.resilience.outcome import Outcome  # noqa: E402

POLICY = """\
version: 1
backends:
  model: {protocol: kserve-v2, endpoints: [{url: "http://127.0.0.1:9"}]}
routes:
  - name: sampled
    match: {model: classifier}
    split: [{backend: model, weight: 100}]
    quality: {sample: 5%, window: 5m}
  - name: plain
    match: {path_prefix: /}
    split: [{backend: model, weight: 100}]
"""


def request(rng: random.Random, i: int) -> ProxyRequest:
    body = json.dumps(
        {"id": str(i), "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                   "data": [round(rng.random(), 4) for _ in range(4)]}]}
    ).encode()  # fmt: skip
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    return ProxyRequest(
        "POST", "/v2/models/classifier/infer", "/v2/models/classifier/infer", headers, body,
        f"r{i}", "127.0.0.1", "http", 0.0,
    )  # fmt: skip


def answer(rng: random.Random) -> bytes:
    x = [rng.random() for _ in range(4)]
    total = sum(x)
    return json.dumps(
        {"model_name": "classifier", "model_version": "1", "outputs": [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": [v * 2 for v in x]},
            {"name": "PROBS", "datatype": "FP32", "shape": [1, 4], "data": [v / total for v in x]},
        ]}
    ).encode()  # fmt: skip


def exchange(gw: Gateway, route_index: int, req: ProxyRequest, body: bytes) -> Exchange:
    """An exchange as it stands at its end: a backend answered 200, the body was written."""
    ex = Exchange(req, gw.snapshot, "kserve-v2")
    ex.route = gw.snapshot.routes[route_index]
    ex.backend = gw.snapshot.backends["model"]
    ex.attempts = 1
    ex.status = 200
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    ex.response = UpstreamResponse(200, headers, body, None, Outcome.SUCCESS)
    return ex


def hot_path(gw: Gateway, calls: int) -> tuple[float, float]:
    """ns per request added by the hook: (route without quality, route sampling 5 %).

    The benchmark loop's own cost (timed empty) is subtracted.
    """
    tap = gw.quality.tap
    rng = random.Random(1)
    req = request(rng, 0)
    body = answer(rng)
    start = time.thread_time()
    for _ in range(calls):
        if len(tap) > 1000:
            tap.take(100_000)
    empty = (time.thread_time() - start) / calls * 1e9
    out = []
    for index in (1, 0):
        ex = exchange(gw, index, req, body)
        start = time.thread_time()
        for _ in range(calls):
            # the hook as ExchangeReporter.end runs it
            route = ex.route
            if tap is not None and route.tap_share:  # type: ignore[union-attr]
                tap.observe(ex, 0.001)
            if len(tap) > 1000:
                tap.take(100_000)  # keep the queue from filling: the worker's job
        out.append((time.thread_time() - start) / calls * 1e9 - empty)
        tap.take(10**9)
    return out[0], out[1]


def worker(gw: Gateway, clock: FakeClock, rate: int, seconds: int) -> tuple[float, float]:
    """(share of one core at `rate` req/s, µs per profiled exchange)."""
    rng = random.Random(2)
    tap, monitor = gw.quality.tap, gw.quality
    exchanges = [exchange(gw, 0, request(rng, i), answer(rng)) for i in range(2000)]
    tick = 0.05
    per_tick = int(rate * tick)

    def traffic(ticks: int) -> None:
        for _ in range(ticks):
            for i in range(per_tick):
                tap.observe(exchanges[i % 2000], 0.002)
            clock.advance(tick)
            monitor.drain(clock.now())
            if clock.now() >= getattr(monitor, "_bench_next_score", 0.0):
                monitor._bench_next_score = clock.now() + 1.0  # type: ignore[attr-defined]
                monitor.score(clock.now())

    traffic(int(60 / tick))  # a minute of warm-up traffic, then a reference from it
    monitor.capture("sampled", None, None, "bench")
    before_cpu, before_n = monitor.cpu_seconds, monitor.processed
    traffic(int(seconds / tick))
    cpu = monitor.cpu_seconds - before_cpu
    n = monitor.processed - before_n
    assert tap.dropped == 0
    return cpu / seconds, cpu / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(POLICY)
        rows = []
        for _ in range(args.rounds):
            clock = FakeClock()
            gw = Gateway(path, clock=clock, rng=random.Random(3))
            plain, sampled = hot_path(gw, args.calls)
            share, per = worker(gw, clock, args.rate, args.seconds)
            rows.append((plain, sampled, share, per))
    med = [statistics.median(r[i] for r in rows) for i in range(4)]
    print(f"hot path, route without quality:   {med[0]:.0f} ns added per request")
    print(f"hot path, route sampling 5 %:      {med[1]:.0f} ns added per request")
    print(f"worker at {args.rate} req/s, 5 %:     {med[2] * 100:.2f} % of one core")
    print(f"worker per profiled exchange:      {med[3]:.1f} us (features, sketches, scoring)")


if __name__ == "__main__":
    main()
