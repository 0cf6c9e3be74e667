"""Microbenchmark: CPU per request of the data listeners alone, aiohttp's against httptools'.

    python loadtests/listener_micro.py [--rounds 3] [--duration 5]

Each listener serves in its own process (pinned to CPU 1 when there are two), with the
gateway's own edge (`ProxyServer`: request id, target and header checks, the exchange and
its report) but a request path that answers at once, without a backend: what is measured
is the listener and the edge, nothing of the pipeline or the upstream client. `wrk` (32
connections, pinned to CPU 0) drives both, interleaved round by round. Reports medians of
CPU µs per request (the server process's utime + stime) and requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.bench import (  # noqa: E402
    BODY,
    PATH,
    WRK_LUA,
    free_port,
    pinned,
    tree_cpu_seconds,
    wait_port,
    wrk,
)

POLICY = """
version: 1
backends:
  clf: {protocol: kserve-v2, endpoints: [{url: "http://127.0.0.1:9"}]}
routes:
  - name: classify
    match: {model: classifier}
    split: [{backend: clf, weight: 100}]
"""
ANSWER = (
    b'{"model_name":"classifier","outputs":[{"name":"OUTPUT0","datatype":"FP32",'
    b'"shape":[1,4],"data":[0.1,0.2,0.3,0.4]}]}'
)


async def serve(kind: str, port: int) -> None:
    import uvloop  # noqa: F401  (the runner below uses it)
    from aiohttp import web

    from gateway.app import Serving, compile_text, tune_gc
    from gateway.clock import MonotonicClock
    from gateway.proxy.exchange import Exchange, LocalAnswer
    from gateway.proxy.h1_server import H1Listener
    from gateway.proxy.listener import GuardedServer
    from gateway.proxy.pipeline import Answer, ExchangeReporter
    from gateway.proxy.server import ProxyServer
    from gateway.telemetry.catalog import Metrics

    snapshot = compile_text(textwrap.dedent(POLICY), "micro.yaml", base_dir=Path("."))

    async def answer(ex: Exchange) -> Answer:
        if ex.body_reader is not None:
            await ex.body_reader(1 << 20)
        return LocalAnswer(200, ANSWER, {"Content-Type": "application/json"})

    serving = Serving(snapshot, answer)
    clock = MonotonicClock()
    proxy = ProxyServer(lambda: serving, ExchangeReporter(Metrics(), clock), clock)
    limits = snapshot.settings.limits
    if kind == "httptools":
        await H1Listener(proxy, limits).start("127.0.0.1", port)
    else:
        server = GuardedServer(
            proxy.handle,
            limits=limits,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
        )
        runner = web.ServerRunner(server, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    tune_gc()
    await asyncio.Event().wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--serve", choices=["aiohttp", "httptools"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        import uvloop

        uvloop.run(serve(a.serve, a.port))
        return 0
    if not shutil.which("wrk"):
        print("the benchmark needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tailguard-listener-"))
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA.format(body=BODY.decode()))
    procs: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for kind in ("aiohttp", "httptools"):
            port = free_port()
            argv = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
            p = subprocess.Popen(pinned("1", argv), stdout=subprocess.DEVNULL)
            procs[kind] = (f"http://127.0.0.1:{port}{PATH}", p)
            wait_port(port)
        for url, _ in procs.values():
            wrk(url, 1.0, lua)  # warm-up
        rows: dict[str, list[dict[str, float]]] = {k: [] for k in procs}
        for r in range(a.rounds):
            for kind, (url, p) in procs.items():
                before = tree_cpu_seconds(p.pid)
                res = wrk(url, a.duration, lua)
                res["cpu_us"] = (tree_cpu_seconds(p.pid) - before) / res["requests"] * 1e6
                rows[kind].append(res)
                print(f"round {r + 1} {kind:9s} {res}", file=sys.stderr)
    finally:
        for _, p in procs.values():
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in rows[kind])

    base = med("aiohttp", "cpu_us")
    print(f"medians of {a.rounds} interleaved rounds of {a.duration:g} s, wrk 32 connections")
    print("| listener | req/s | CPU µs/req | vs aiohttp |")
    print("| --- | --- | --- | --- |")
    for kind in rows:
        cpu = med(kind, "cpu_us")
        print(f"| {kind} | {med(kind, 'rps'):,.0f} | {cpu:.1f} | {cpu / base:.2f}x |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
