"""A gRPC load generator: a closed loop (N callers back to back) or an open loop (a fixed rate).

    python loadtests/grpc_load.py HOST:PORT [--concurrency 32] [--duration 5]
    python loadtests/grpc_load.py HOST:PORT --rate 400 [--duration 5]

Raw bytes (a ModelInferRequest made once), so the generator's own cost per call stays
small. Closed loop: prints one JSON line, calls, errors (by status), calls/s, p50 and p99
in ms. It measures capacity, but a slow answer holds its caller back, so it hides stalls.

Open loop (`--rate`): calls leave at their scheduled time whatever came back, and latency
is measured from each call's *intended* send time, so a stalled server cannot hide its
stall by slowing the generator down (no coordinated omission), as loadtests/openloop.py
does for HTTP and with its fields: {"sent", "ok", "errors", "rate", "p50_ms", "p90_ms",
"p99_ms", "late_p99_ms"} plus "error_codes" (failed calls by status). `rate` is the rate
the calls actually left at and `late_p99_ms` how late they left: when either is off, the
generator fell behind and the latencies include its own delay.
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
METADATA = (("x-user-id", "user-42"),)
CALL_TIMEOUT_S = 10.0


def request_bytes() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="classifier", id="b")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(b"\x00\x00\x80?" * 4)
    return bytes(req.SerializeToString())


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as loadtests/openloop.py and openloop.c compute it."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(target: str, concurrency: int, duration: float) -> dict[str, object]:
    body = request_bytes()
    channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)])
    call = channel.unary_unary(METHOD)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    await asyncio.wait_for(channel.channel_ready(), 15)
    end = time.perf_counter() + duration

    async def caller() -> None:
        clock = time.perf_counter
        while clock() < end:
            t0 = clock()
            try:
                await call(body, metadata=METADATA, timeout=CALL_TIMEOUT_S)
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


async def sleep_until(when: float) -> None:
    """Return at `when` (perf_counter time) or just after, never before.

    uvloop's timers have millisecond resolution and may fire up to half a millisecond early;
    a call sent before its time would have its latency read shorter than the server made it.
    """
    while (delay := when - time.perf_counter()) > 0:  # noqa: ASYNC110 - a deadline, no event
        await asyncio.sleep(delay)


async def run_open(target: str, rate: float, duration: float) -> dict[str, object]:
    body = request_bytes()
    channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)])
    call = channel.unary_unary(METHOD)
    latencies: list[float] = []
    late: list[float] = []
    errors: Counter[str] = Counter()
    clock = time.perf_counter
    last_send = 0.0
    await asyncio.wait_for(channel.channel_ready(), 15)

    async def one(intended: float) -> None:
        nonlocal last_send
        sent = clock()
        late.append(sent - intended)
        last_send = max(last_send, sent)
        try:
            await call(body, metadata=METADATA, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            errors[e.code().name] += 1
            return
        latencies.append(clock() - intended)

    n = int(rate * duration)
    start = clock() + 0.05
    tasks = []
    for i in range(n):
        intended = start + i / rate
        await sleep_until(intended)
        tasks.append(asyncio.ensure_future(one(intended)))
    await asyncio.gather(*tasks)
    await channel.close()
    latencies.sort()
    late.sort()
    span = last_send - start
    return {
        "sent": n,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "rate": (n - 1) / span if span > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p90_ms": percentile(latencies, 0.9) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "late_p99_ms": percentile(late, 0.99) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--concurrency", type=int, default=32, help="closed loop: callers")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=0.0, help="open loop: calls/s (0: closed loop)")
    a = p.parse_args()
    if a.rate > 0:
        result = uvloop.run(run_open(a.target, a.rate, a.duration))
    else:
        result = uvloop.run(run(a.target, a.concurrency, a.duration))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
