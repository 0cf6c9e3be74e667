"""An open-loop load generator: requests leave at their scheduled time, whatever came back.

Latency is measured from each request's *intended* send time, so a stalled
server cannot hide its stall by slowing the generator down (no coordinated
omission). Used by the benchmark for the fixed-rate latency comparison.

    python loadtests/openloop.py URL --rate 2000 --duration 5 [--body FILE]
Prints one JSON line: {"sent", "ok", "errors", "p50_ms", "p90_ms", "p99_ms", "late_ms"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(
    url: str, rate: float, duration: float, body: bytes, connections: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    late: list[float] = []
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        headers = {"content-type": "application/json"}

        async def one(intended: float) -> None:
            nonlocal errors
            late.append(time.perf_counter() - intended)
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - intended)

        start = time.perf_counter() + 0.05
        n = int(rate * duration)
        tasks = []
        for i in range(n):
            intended = start + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(intended)))
        await asyncio.gather(*tasks)
    latencies.sort()
    late.sort()
    return {
        "sent": n,
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p90_ms": percentile(latencies, 0.9) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "late_p99_ms": percentile(late, 0.99) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--body", default="")
    p.add_argument("--connections", type=int, default=64)
    a = p.parse_args()
    body = Path(a.body).read_bytes() if a.body else b"{}"
    try:
        import uvloop

        result = uvloop.run(run(a.url, a.rate, a.duration, body, a.connections))
    except ImportError:
        result = asyncio.run(run(a.url, a.rate, a.duration, body, a.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
