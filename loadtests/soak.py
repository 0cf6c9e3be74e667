"""Soak: constant load through the full policy stack for minutes; does the gateway's memory stay flat?

Starts a simulated backend and `tailguard run` with the benchmark's full policy (sticky
split, breakers, outlier detection, retries, hedging armed, a response cache, a rate limit
high enough never to refuse), drives it open-loop at a fixed rate with many distinct
sticky users and cache keys, and samples the gateway's resident memory every few
seconds. After a warm-up, every sample must stay within ±10 % of the first one.

    python loadtests/soak.py --minutes 10 --rate 500 [--listener httptools|aiohttp] [--out soak.json]

Prints one line per sample and a verdict; exits 1 when memory was not flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from bench import FULL, free_port, wait_port  # noqa: E402

SOAK_EXTRA = """
    cache: {{ttl: 0s, stale_if_error: 10m, max_entries: 5000, ignore_fields: [id], methods: [POST]}}
    fallback: [{{cache: true}}]
    rate_limit: {{key: header, header: x-user-id, rate: 100000/s, burst: 100000}}
"""
TOLERANCE = 0.10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def drive(
    url: str, rate: float, seconds: float, counts: dict[str, int], users: int, bodies: int
) -> None:
    """Open loop: one request every 1/rate s, many users and bodies, never waiting for answers."""
    rnd = random.Random(1)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as http:
        pending: set[asyncio.Task[None]] = set()

        async def one(user: int, value: int) -> None:
            body = {
                "id": str(value),
                "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                            "data": [value, 1, 2, 3]}],
            }  # fmt: skip
            try:
                async with http.post(url, json=body, headers={"x-user-id": f"user-{user}"}) as r:
                    await r.read()
                    counts["ok" if r.status == 200 else f"status_{r.status}"] += 1
            except aiohttp.ClientError:
                counts["errors"] += 1

        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            due = start + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.ensure_future(one(rnd.randrange(users), rnd.randrange(bodies)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        await asyncio.gather(*pending, return_exceptions=True)


def main_sync(a: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tailguard-soak-"))
    sim_port, port, admin = free_port(), free_port(), free_port()
    up = f"http://127.0.0.1:{sim_port}"
    policy = tmp / "soak.yaml"
    policy.write_text(
        FULL.format(port=port, admin=admin, up=up, listener=a.listener) + SOAK_EXTRA.format()
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port),
             "--model", "classifier"], env=env, stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy),
             "--log-level", "warning", "--no-watch"], env=env, stdout=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        wait_port(sim_port)
        wait_port(port)
        result = asyncio.run(soak(a, port, procs[1].pid))
        if a.out:
            Path(a.out).write_text(json.dumps(result, indent=2))
        return 0 if result["flat"] else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


async def soak(a: argparse.Namespace, port: int, pid: int) -> dict[str, object]:
    counts: dict[str, int] = {"ok": 0, "errors": 0}
    total = a.minutes * 60
    load = asyncio.ensure_future(
        drive(
            f"http://127.0.0.1:{port}/v2/models/classifier/infer",
            a.rate,
            total,
            counts,
            a.users,
            a.bodies,
        )
    )
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    while not load.done():
        await asyncio.sleep(a.every)
        t = time.monotonic() - start
        samples.append((round(t, 1), rss_kib(pid)))
        print(f"{t:7.1f}s rss {samples[-1][1] / 1024:7.1f} MiB  {dict(counts)}", flush=True)
    await load
    after = [kib for t, kib in samples if t >= a.warmup]
    base = after[0] if after else samples[-1][1]
    worst = max(abs(k - base) / base for k in after) if after else 0.0
    flat = worst <= TOLERANCE
    result = {
        "minutes": a.minutes,
        "rate": a.rate,
        "warmup_s": a.warmup,
        "requests": counts,
        "rss_kib": samples,
        "baseline_kib": base,
        "max_drift": round(worst, 4),
        "flat": flat,
    }
    print(
        f"RSS after warm-up: {base / 1024:.1f} MiB, largest drift {worst:+.1%} "
        f"(limit ±{TOLERANCE:.0%}): {'PASS' if flat else 'FAIL'}"
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--warmup", type=float, default=90.0, help="seconds before the baseline")
    # Every per-key structure (sticky memo, buckets, cache) is bounded; these key counts let
    # them fill during the warm-up, so that what grows afterwards is a leak, not a fill.
    p.add_argument("--users", type=int, default=2000, help="distinct sticky users")
    p.add_argument("--bodies", type=int, default=2000, help="distinct request bodies")
    p.add_argument("--out", help="write the samples and verdict as JSON")
    p.add_argument("--listener", choices=("httptools", "aiohttp"), default="httptools")
    return main_sync(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
