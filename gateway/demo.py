"""`tailguard demo`: two regions of simulated backends, the gateway, steady traffic, a live summary.

Everything runs in this one process, so Ctrl-C (or the end of `--duration`)
stops it all and leaves nothing behind. The acts: traffic flows to the local
region while the canary (classifier-v2) steps up every five seconds; ten seconds
in, the whole local region dies; the gateway fails over to the other region with
retries and outlier ejection; fifteen seconds later the region comes back and
health checks return traffic to it. At 35 s every backend dies for eight seconds:
the gateway answers from its stale cache and says so. Hedging is on throughout
and trims the simulated tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

from gateway.app import Gateway
from gateway.sim import Faults, SimServer

POLICY = Path(__file__).resolve().parent.parent / "policies" / "demo.yaml"
BODY = (
    b'{"id":"demo","inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32",'
    b'"data":[0.1,0.2,0.3,0.4]}]}'
)
SIMS = [  # (port, region, name)
    (18101, "us-east", "v1-use-a"),
    (18102, "us-east", "v1-use-b"),
    (18111, "eu-west", "v1-euw-a"),
    (18112, "eu-west", "v1-euw-b"),
    (18103, "us-east", "v2-use"),
    (18113, "eu-west", "v2-euw"),
]
KILL_AT, REVIVE_AT = 10.0, 25.0
OUTAGE_AT, OUTAGE_END = 35.0, 43.0
# A realistic shape: 8 ms typical, 3 % of requests 15x slower (a GC pause, a cold cache).
TAIL = Faults.from_dict(
    {"latency": {"kind": "tail", "ms": 8, "tail_rate": 0.03, "tail_factor": 15}}
)


class Tally:
    """What the last window of traffic looked like, for one summary line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.by_backend: Counter[str] = Counter()
        self.by_region: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.hedged = 0
        self.retried = 0
        self.fallbacks: Counter[str] = Counter()

    def line(self, t: float, phase: str) -> str:
        n = len(self.latencies)
        if not n:
            return f"{t:6.1f}s  {phase:<22} no traffic"
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(n - 1, int(q * n))] * 1000

        ok = n - sum(self.errors.values())
        regions = " ".join(f"{k}={v * 100 // n}%" for k, v in sorted(self.by_region.items()))
        backends = " ".join(f"{k}={v * 100 // n}%" for k, v in sorted(self.by_backend.items()))
        errs = ",".join(f"{k}:{v}" for k, v in self.errors.items()) or "none"
        fb = ",".join(f"{k}:{v}" for k, v in self.fallbacks.items()) or "none"
        return (
            f"{t:6.1f}s  {phase:<22} ok {ok * 100 / n:5.1f}%  p50 {pct(0.5):5.1f}ms "
            f"p99 {pct(0.99):6.1f}ms  hedged {self.hedged:3d} retried {self.retried:3d}  "
            f"{regions}  {backends}  fallback {fb}  errors {errs}"
        )


async def run_demo(duration: float = 0.0, rate: float = 50.0, *, faults: bool = True) -> int:
    sims = [
        SimServer(models=["classifier"], region=r, name=n, port=p, faults=TAIL, seed=p)
        for p, r, n in SIMS
    ]
    for s in sims:
        await s.start()
    gateway = Gateway(POLICY)
    where = await gateway.start()
    print(f"tailguard demo: gateway on {where.url}, metrics on {where.admin_url}/metrics")
    print(f"  {len(sims)} simulated backends in us-east and eu-west; policy {POLICY}")
    if faults:
        print(f"  at {KILL_AT:.0f}s all of us-east dies; at {REVIVE_AT:.0f}s it comes back")
        print(f"  at {OUTAGE_AT:.0f}s every backend dies; at {OUTAGE_END:.0f}s they come back")
    print("  the canary classifier-v2 steps 10% -> 25% -> 50% -> 100% while it stays healthy")
    print("  Ctrl-C to stop\n", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tally = Tally()
    rng = random.Random(7)
    start = time.monotonic()
    phase = "steady"
    inflight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        headers = {"content-type": "application/json", "x-user-id": f"user-{rng.randrange(500)}"}
        try:
            async with session.post(
                f"{where.url}/v2/models/classifier/infer", data=BODY, headers=headers
            ) as r:
                await r.read()
                tally.latencies.append(time.monotonic() - t0)
                tally.by_backend[r.headers.get("x-tailguard-backend", "?")] += 1
                tally.by_region[r.headers.get("x-sim-region", "?")] += 1
                if "x-tailguard-fallback" in r.headers:
                    tally.fallbacks[r.headers["x-tailguard-fallback"]] += 1
                if r.headers.get("x-tailguard-hedged") == "true":
                    tally.hedged += 1
                if int(r.headers.get("x-tailguard-attempts", "1")) > 1:
                    tally.retried += 1
                if r.status >= 400:
                    tally.errors[str(r.status)] += 1
        except aiohttp.ClientError as e:
            tally.latencies.append(time.monotonic() - t0)
            tally.errors[type(e).__name__] += 1

    async with aiohttp.ClientSession() as session:
        next_send = start
        next_print = start + 2.0
        killed = revived = outage = recovered = False
        while not stop.is_set():
            now = time.monotonic()
            t = now - start
            if duration and t >= duration:
                break
            if faults and not killed and t >= KILL_AT:
                killed, phase = True, "us-east DOWN"
                for s in sims:
                    if s.region == "us-east":
                        await s.die()
            if faults and killed and not revived and t >= REVIVE_AT:
                revived, phase = True, "us-east back"
                for s in sims:
                    if s.region == "us-east":
                        await s.revive()
            if faults and not outage and t >= OUTAGE_AT:
                outage, phase = True, "ALL backends DOWN"
                for s in sims:
                    await s.die()
            if faults and outage and not recovered and t >= OUTAGE_END:
                recovered, phase = True, "backends back"
                for s in sims:
                    await s.revive()
            if now >= next_print:
                analysis = gateway.canary.analysis("classify")
                canary = f"canary {analysis.weight:g}%" if analysis is not None else ""
                print(tally.line(t, f"{phase} {canary}"), flush=True)
                tally.reset()
                next_print += 2.0
            if now >= next_send:
                task = asyncio.ensure_future(one(session))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                next_send += 1.0 / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), timeout=max(0.0, min(next_send, next_print) - time.monotonic())
                )
        if inflight:
            await asyncio.wait(inflight, timeout=5)
    await gateway.stop()
    for s in sims:
        await s.stop()
    print("demo stopped", file=sys.stderr)
    return 0
