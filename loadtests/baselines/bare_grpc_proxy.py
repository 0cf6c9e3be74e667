"""The gRPC yardstick: the least a Python grpc.aio pass-through proxy can do.

One channel to one upstream, one generic handler for every method with identity
serializers (raw bytes both ways), the client's metadata passed on, the upstream's
status passed back. No routing, no policy, no metrics. The gRPC benchmark reports the
gateway's gRPC path as a ratio to this.

    python loadtests/baselines/bare_grpc_proxy.py --port 8001 --upstream 127.0.0.1:18001
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

# what grpc itself sets on a call, and must not be copied onto another
SKIP = {"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding", "host"}


class Passthrough(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._unary: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method.endswith("StreamInfer"):
            call = self._streams.get(method)
            if call is None:
                call = self._streams[method] = self._channel.stream_stream(method)
            return grpc.stream_stream_rpc_method_handler(_stream(call))
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self._channel.unary_unary(method)
        return grpc.unary_unary_rpc_method_handler(_unary(call))


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (k, v) for k, v in context.invocation_metadata() or () if k not in SKIP and k[0] != ":"
    )


def _unary(call: Any) -> Any:
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            reply: bytes = await call(
                body, metadata=_metadata(context), timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")
        return reply

    return handle


def _stream(call: Any) -> Any:
    async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        upstream = call(requests, metadata=_metadata(context), timeout=context.time_remaining())
        try:
            async for message in upstream:
                yield message
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")

    return handle


async def serve(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream, options=[("grpc.enable_retries", 0)])
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Passthrough(channel),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bare gRPC proxy listening on 127.0.0.1:{port}", flush=True)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(None)
        await channel.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="HOST:PORT of the gRPC backend")
    a = p.parse_args()
    try:
        uvloop.run(serve(a.port, a.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
