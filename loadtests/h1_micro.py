"""Microbenchmark: CPU per request of the upstream transports, H1Transport against HttpTransport.

    python loadtests/h1_micro.py [--requests 20000] [--rounds 5] [--loop uvloop|asyncio]
                                 [--against REV]

`--against REV` adds the H1Transport of git revision REV (its `gateway/proxy/h1.py`, loaded
beside today's) as a third transport, `h1@REV`: a before/after comparison in one run.

The simulated backend runs in its own process (pinned to CPU 0 when there are two), so the
CPU time measured here (`time.process_time`) is the client side alone. Each round runs both
transports, sequentially (one request at a time) and with 32 concurrent callers, one after
the other, so drift of the machine hits both alike. Reports medians of µs per request and
the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.policy.compile import EndpointSpec  # noqa: E402
from gateway.proxy.h1 import H1Transport  # noqa: E402
from gateway.proxy.transport import PoolSpec  # noqa: E402
from tests.aiohttp_transport import HttpTransport  # noqa: E402

PATH = "/v2/models/classifier/infer"
BODY = (
    b'{"id":"b","inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32",'
    b'"data":[0.1,0.2,0.3,0.4]}]}'
)
HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "bench",
    "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-Proto": "http",
    "X-Request-Id": "0123456789abcdef",
}
CONCURRENCY = 32

Transport = H1Transport | HttpTransport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def h1_of(rev: str) -> type[H1Transport]:
    """`H1Transport` as it was at git revision `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:gateway/proxy/h1.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"h1_{rev.replace('/', '_')}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(f"h1_{rev}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    transport: type[H1Transport] = module.H1Transport
    return transport


def start_sim(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gateway.sim", "--port", str(port)]
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the simulated backend did not start")


async def per_request(t: Transport, n: int, concurrency: int) -> float:
    """µs of this process's CPU per request."""

    async def worker(count: int) -> None:
        for _ in range(count):
            resp = await t.send("POST", PATH, HEADERS, BODY)
            if resp.status != 200:
                raise SystemExit(f"unexpected status {resp.status}")

    per = n // concurrency
    start = time.process_time()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    return (time.process_time() - start) / (per * concurrency) * 1e6


async def run(url: str, requests: int, rounds: int, against: str | None) -> None:
    spec = EndpointSpec(id="e", backend="b", url=url, region="local", weight=1, drain=False)
    pool = PoolSpec(max_connections=CONCURRENCY, connect_timeout=1.0, idle_timeout=60.0)
    makers: dict[str, Callable[[], Transport]] = {
        "h1": lambda: H1Transport(spec.url, pool, check_json=True),
        "aiohttp": lambda: HttpTransport(spec.url, pool, check_json=True),
    }
    if against is not None:
        before = h1_of(against)
        makers[f"h1@{against}"] = lambda: before(spec.url, pool, check_json=True)
    transports = {name: make() for name, make in makers.items()}
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for t in transports.values():  # warm up: connections open, code paths hot
            await per_request(t, 2000, CONCURRENCY)
        for r in range(rounds):
            for concurrency in (1, CONCURRENCY):
                order = list(transports.items())
                if r % 2:
                    order.reverse()
                for name, t in order:
                    us = await per_request(t, requests, concurrency)
                    results.setdefault((name, concurrency), []).append(us)
    finally:
        for t in transports.values():
            await t.close()
    print(f"{'transport':<10} {'callers':>7} {'µs CPU/request (median)':>24}  rounds")
    for (name, concurrency), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        shown = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<10} {concurrency:>7} {statistics.median(values):>24.1f}  {shown}")
    for concurrency in (1, CONCURRENCY):
        h1 = statistics.median(results[("h1", concurrency)])
        aio = statistics.median(results[("aiohttp", concurrency)])
        print(f"{concurrency:>2} callers: h1/aiohttp = {h1 / aio:.2f} (saves {aio - h1:.1f} µs)")
        if against is not None:
            old = statistics.median(results[(f"h1@{against}", concurrency)])
            print(
                f"{concurrency:>2} callers: h1/h1@{against} = {h1 / old:.2f} ({h1 - old:+.1f} µs)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--against", metavar="REV", help="also run h1.py of this git revision")
    args = parser.parse_args()
    port = free_port()
    sim = start_sim(port)
    try:
        coro = run(f"http://127.0.0.1:{port}", args.requests, args.rounds, args.against)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
