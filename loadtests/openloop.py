"""An open-loop load generator: requests leave at their scheduled time, whatever came back.

Latency is measured from each request's *intended* send time, so a stalled
server cannot hide its stall by slowing the generator down (no coordinated
omission). Used by the benchmark for the fixed-rate latency comparison.

    python loadtests/openloop.py URL --rate 2000 --duration 5 [--body FILE] [--native]
Prints one JSON line: {"sent", "ok", "errors", "p50_ms", "p90_ms", "p99_ms", "late_p99_ms"}.

This Python generator tops out near 1,000 req/s on a small machine. `--native` runs the same
schedule from openloop.c (compiled here with the system's C compiler on first use), which
holds tens of thousands on one core; `late_p99_ms` shows when a generator falls behind.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

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


def native_binary() -> Path:
    """openloop.c compiled once per source version, in the temp directory."""
    src = Path(__file__).with_name("openloop.c")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"tailguard-openloop-{digest}"
    if not out.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("--native needs a C compiler (cc or gcc)")
        tmp = out.with_suffix(".tmp")
        subprocess.run([cc, "-O2", "-o", str(tmp), str(src), "-lm"], check=True)
        tmp.replace(out)
    return out


def run_native(url: str, rate: float, duration: float, body: Path, connections: int) -> str:
    u = urlsplit(url)
    argv = [str(native_binary()), u.hostname or "127.0.0.1", str(u.port or 80),
            u.path + (f"?{u.query}" if u.query else ""), f"{rate:g}", f"{duration:g}",
            str(connections), str(body)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--body", default="")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--native", action="store_true", help="run the C generator (openloop.c)")
    a = p.parse_args()
    if a.native:
        if not a.body:
            raise SystemExit("--native needs --body")
        print(run_native(a.url, a.rate, a.duration, Path(a.body), a.connections))
        return
    body = Path(a.body).read_bytes() if a.body else b"{}"
    try:
        import uvloop

        result = uvloop.run(run(a.url, a.rate, a.duration, body, a.connections))
    except ImportError:
        result = asyncio.run(run(a.url, a.rate, a.duration, body, a.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
