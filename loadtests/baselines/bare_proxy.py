"""The yardstick: the least a Python aiohttp + uvloop reverse proxy can do.

One shared ClientSession, no routing, no policy, no metrics: forward method,
path, headers and body to one upstream and copy the answer back. The benchmark
reports the gateway's cost as a ratio to this.

    python loadtests/baselines/bare_proxy.py --port 8081 --upstream http://127.0.0.1:18001
"""

from __future__ import annotations

import argparse
import gc

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
       "content-length"}  # fmt: skip


async def serve(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
            return web.Response(status=resp.status, body=data, headers=out)

    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"bare proxy listening on http://127.0.0.1:{port}", flush=True)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        await __import__("asyncio").Event().wait()
    finally:
        await session.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    try:
        uvloop.run(serve(a.port, a.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
