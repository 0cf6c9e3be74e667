"""A closed-loop gRPC load generator: N callers send one ModelInfer each, back to back.

    python loadtests/grpc_load.py HOST:PORT [--concurrency 32] [--duration 5]

Raw bytes (a ModelInferRequest made once), so the generator's own cost per call stays
small. Prints one JSON line: calls, errors (by status), calls/s, p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter

import grpc
import uvloop

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="classifier", id="b")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(b"\x00\x00\x80?" * 4)
    return bytes(req.SerializeToString())


async def run(target: str, concurrency: int, duration: float) -> dict[str, object]:
    body = request_bytes()
    channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)])
    call = channel.unary_unary(METHOD)
    metadata = (("x-user-id", "user-42"),)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    await asyncio.wait_for(channel.channel_ready(), 15)
    end = time.perf_counter() + duration

    async def caller() -> None:
        clock = time.perf_counter
        while clock() < end:
            t0 = clock()
            try:
                await call(body, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
                continue
            latencies.append(clock() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await channel.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "calls": len(latencies),
        "errors": dict(errors),
        "rps": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    print(json.dumps(uvloop.run(run(a.target, a.concurrency, a.duration))), flush=True)


if __name__ == "__main__":
    main()
