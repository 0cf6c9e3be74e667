"""Benchmark of the gateway's gRPC path against a bare grpc.aio pass-through proxy.

    python loadtests/grpc_bench.py [--rounds 3] [--duration 5] [--concurrency 32] [--markdown]

Targets, each a separate process so its CPU time is its own, measured interleaved:
  direct   the simulated backend's gRPC listener called directly (the floor)
  bare     loadtests/baselines/bare_grpc_proxy.py, the least a Python gRPC proxy can do
  minimal  the gateway's gRPC listener with one route and one gRPC endpoint
  full     the same with the full policy stack: sticky split over two backends, breakers with
           slow-call detection, outlier detection, retries with a budget, hedging armed at p95

Load: `loadtests/grpc_load.py`, raw ModelInfer calls. First a closed loop (N callers back to
back) for calls/s, p50/p99 and CPU per call; then, in rounds of their own, an open loop at a
fixed rate, about half the minimal gateway's closed-loop calls/s, for the p50 each target
adds over calling the backend directly (latency from each call's intended send time, so a
stall is not hidden by the generator slowing down). The proxy under test is pinned to CPU 1,
the backend and the load generator to CPU 0 (taskset) when there are two CPUs; CPU per call
is the proxy process's own CPU time over the calls it served. Reports medians over the
rounds, and whether the open-loop generator held its rate against the backend alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_seconds, free_port, pinned, wait_port

ROOT = Path(__file__).resolve().parent.parent
# The open-loop generator held its rate when the calls left at least this share of the asked
# rate and their lateness stayed within what uvloop's millisecond timers add on their own;
# past that, every target's latency includes the generator's delay and the rate is too high.
HELD_RATE_SHARE = 0.99
HELD_LATE_P99_MS = 2.0

MINIMAL = """
version: 1
gateway: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}",
           grpc_listen: "127.0.0.1:{grpc}"}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{grpc: "{up}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 5s
"""

FULL = """
version: 1
gateway: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}",
           grpc_listen: "127.0.0.1:{grpc}"}}
backends:
  clf-v1:
    protocol: kserve-v2
    endpoints: [{{grpc: "{up}"}}]
    outlier_detection: {{consecutive_failures: 5}}
    circuit_breaker: {{window: 10s, minimum_calls: 20, failure_rate: 50%,
                      slow_call: {{duration: 800ms, rate: 80%}}}}
  clf-v2:
    protocol: kserve-v2
    endpoints: [{{grpc: "{up}"}}]
    outlier_detection: {{consecutive_failures: 5}}
    circuit_breaker: {{window: 10s, minimum_calls: 20, failure_rate: 50%}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf-v1, weight: 95}}, {{backend: clf-v2, weight: 5}}]
    sticky: {{header: x-user-id}}
    timeout: 5s
    idempotent: true
    retries: {{attempts: 2, per_try_timeout: 2s, budget: 20%}}
    hedging: {{delay: p95, min_delay: 20ms, max_delay: 500ms, budget: 5%}}
"""


def load(target: str, duration: float, concurrency: int = 0, rate: float = 0.0) -> dict[str, Any]:
    """One grpc_load.py run: a closed loop of `concurrency` callers, or an open loop at `rate`."""
    argv = [sys.executable, str(ROOT / "loadtests" / "grpc_load.py"), target]
    argv += ["--duration", f"{duration:g}"]
    argv += ["--rate", f"{rate:g}"] if rate > 0 else ["--concurrency", str(concurrency)]
    out = subprocess.run(pinned("0", argv), capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--markdown", action="store_true", help="print the docs table")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tailguard-grpc-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spawn(cpu: str, argv: list[str], port: int) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(pinned(cpu, argv), env=env, stdout=subprocess.DEVNULL)
        procs.append(p)
        wait_port(port)
        return p

    try:
        sim_port, sim_grpc = free_port(), free_port()
        spawn(
            "0",
            [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port),
             "--grpc-port", str(sim_grpc), "--model", "classifier"],
            sim_grpc,
        )  # fmt: skip
        up = f"127.0.0.1:{sim_grpc}"
        targets: dict[str, tuple[str, subprocess.Popen[bytes] | None]] = {"direct": (up, None)}
        bare = free_port()
        targets["bare"] = (
            f"127.0.0.1:{bare}",
            spawn(
                "1",
                [sys.executable, str(ROOT / "loadtests" / "baselines" / "bare_grpc_proxy.py"),
                 "--port", str(bare), "--upstream", up],
                bare,
            ),
        )  # fmt: skip
        for name, template in (("minimal", MINIMAL), ("full", FULL)):
            port, admin, grpc_port = free_port(), free_port(), free_port()
            policy = tmp / f"{name}.yaml"
            policy.write_text(template.format(port=port, admin=admin, grpc=grpc_port, up=up))
            targets[name] = (
                f"127.0.0.1:{grpc_port}",
                spawn(
                    "1",
                    [sys.executable, "-m", "gateway", "run", "--policy", str(policy),
                     "--log-level", "warning"],
                    grpc_port,
                ),
            )  # fmt: skip

        results: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for target, _ in targets.values():  # warm-up: channels, caches, first-call costs
            load(target, 1.0, a.concurrency)
        for r in range(a.rounds):
            for name, (target, proc) in targets.items():
                before = cpu_seconds(proc.pid) if proc else 0.0
                res = load(target, a.duration, a.concurrency)
                if proc:
                    res["cpu_us"] = (cpu_seconds(proc.pid) - before) / max(1, res["calls"]) * 1e6
                results[name].append(res)
                print(f"round {r + 1} {name:8s} {res}", file=sys.stderr)

        # about half the minimal gateway's capacity: loaded, not saturated, for every target
        rate = max(50.0, round(statistics.median(x["rps"] for x in results["minimal"]) / 2, -1))
        opened: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for r in range(a.rounds):
            for name, (target, _) in targets.items():
                res = load(target, a.duration, rate=rate)
                opened[name].append(res)
                print(f"open {r + 1} {name:8s} {res}", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def med(name: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in results[name])

    def omed(name: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in opened[name])

    bare_cpu = med("bare", "cpu_us")
    direct_fixed = omed("direct", "p50_ms")
    summary = {
        name: {
            "calls_per_s": med(name, "rps"),
            "p50_ms": med(name, "p50_ms"),
            "p99_ms": med(name, "p99_ms"),
            "errors": sum(sum(x["errors"].values()) for x in results[name]),
            "fixed_rate": rate,
            "p50_ms_fixed_rate": omed(name, "p50_ms"),
            "p99_ms_fixed_rate": omed(name, "p99_ms"),
            "late_p99_ms_fixed_rate": omed(name, "late_p99_ms"),
            "errors_fixed_rate": sum(x["errors"] for x in opened[name]),
            **({"added_p50_ms": omed(name, "p50_ms") - direct_fixed} if name != "direct" else {}),
            **(
                {"cpu_us": med(name, "cpu_us"), "cpu_vs_bare": med(name, "cpu_us") / bare_cpu}
                if name != "direct"
                else {}
            ),
        }
        for name in results
    }
    print(json.dumps(summary, indent=2))
    sent, got = omed("direct", "sent"), omed("direct", "rate")
    late, failed = omed("direct", "late_p99_ms"), summary["direct"]["errors_fixed_rate"]
    held = got >= HELD_RATE_SHARE * rate and late <= HELD_LATE_P99_MS and failed == 0
    verdict = (
        f"Open-loop generator against the backend alone: {sent:,.0f} calls asked at {rate:g} "
        f"calls/s left at {got:,.1f} calls/s, late p99 {late:.2f} ms, {failed:,.0f} failed: "
        + ("it held its rate." if held else "it did **not** hold its rate.")
    )
    if not a.markdown:
        print(verdict, file=sys.stderr)
    else:
        print(
            f"| target | calls/s (closed, {a.concurrency} callers) | CPU µs/call | CPU vs bare | "
            f"p50 ms | p99 ms | p50 ms at fixed rate | added p50 vs direct |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, s in summary.items():
            cpu = f"{s['cpu_us']:.0f}" if "cpu_us" in s else "-"
            ratio = f"{s['cpu_vs_bare']:.2f}x" if "cpu_vs_bare" in s else "-"
            added = f"{s['added_p50_ms']:+.2f} ms" if "added_p50_ms" in s else "-"
            print(
                f"| {name} | {s['calls_per_s']:,.0f} | {cpu} | {ratio} | "
                f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['p50_ms_fixed_rate']:.2f} | {added} |"
            )
        print()
        print(f"Fixed rate: {rate:g} calls/s (open loop). {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
