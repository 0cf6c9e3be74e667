"""Benchmark: the gateway against a direct call and the bare aiohttp proxy, interleaved in one run.

    python loadtests/bench.py [--rounds 3] [--duration 5] [--markdown] [--against REV]

Targets, each a separate process so its CPU time is its own:
  direct   the simulated backend called directly (no proxy at all)
  bare     loadtests/baselines/bare_proxy.py, the least a Python aiohttp proxy can do (the yardstick)
  floor    loadtests/baselines/floor_proxy.py, the least a Python uvloop + llhttp proxy can do
           (callbacks only, no logic: the floor under any Python proxy)
  nginx    nginx, one worker, upstream keep-alive (when /usr/sbin/nginx or `nginx` is installed)
  minimal  the gateway with one route and one endpoint (data listener: aiohttp)
  full     the gateway with the full policy stack: sticky split, breakers, outlier detection,
           retries with budget, hedging armed (adaptive delay), metrics on (aiohttp)
  minimal-h, full-h  the same two on the llhttp data listener (`gateway.listener: httptools`)
  minimal-h@REV, full-h@REV  with `--against REV`: the same two as git revision REV has them
           (a detached worktree), to measure a change interleaved in one run

For each round and target: closed loop (wrk, 32 connections) for req/s, p50/p99 and CPU µs per
request of the proxy process (from /proc utime+stime); then an open-loop fixed rate at half the
bare proxy's capacity for the added p50 over direct. Reports medians over the rounds.
The proxy is pinned to CPU 1, the backend and load generator to CPU 0 (taskset) when there are
two or more CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = (
    b'{"id":"b","inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32",'
    b'"data":[0.1,0.2,0.3,0.4]}]}'
)
PATH = "/v2/models/classifier/infer"
# The Python open-loop generator falls behind above this; the native one (openloop.c, built
# with the system's C compiler) holds tens of thousands, so it is used whenever cc exists.
PYTHON_OPEN_LOOP_MAX_RATE = 1000.0
NATIVE_OPEN_LOOP = shutil.which("cc") is not None or shutil.which("gcc") is not None

MINIMAL = """
version: 1
gateway: {{region: local, listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}",
          listener: {listener}}}
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{up}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 5s
"""

FULL = """
version: 1
gateway: {{region: local, listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}",
          listener: {listener}}}
backends:
  clf-v1:
    protocol: kserve-v2
    endpoints: [{{url: "{up}"}}]
    outlier_detection: {{consecutive_failures: 5}}
    circuit_breaker: {{window: 10s, minimum_calls: 20, failure_rate: 50%,
                      slow_call: {{duration: 800ms, rate: 80%}}}}
  clf-v2:
    protocol: kserve-v2
    endpoints: [{{url: "{up}"}}]
    outlier_detection: {{consecutive_failures: 5}}
    circuit_breaker: {{window: 10s, minimum_calls: 20, failure_rate: 50%}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf-v1, weight: 95}}, {{backend: clf-v2, weight: 5}}]
    sticky: {{header: x-user-id}}
    timeout: 5s
    retries: {{attempts: 2, per_try_timeout: 2s, budget: 20%, non_idempotent: true}}
    hedging: {{delay: p95, min_delay: 20ms, max_delay: 500ms, budget: 5%}}
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

WRK_LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-user-id"] = "user-42"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (nginx's worker serves, its master waits)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            total += cpu_seconds(int(child))
    return total


def wait_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpu, *argv]
    return argv


def wrk(url: str, duration: float, lua: Path) -> dict[str, float]:
    out = subprocess.run(
        pinned("0", ["wrk", "-t1", "-c32", f"-d{duration:g}s", "--latency", "-s", str(lua), url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def lat(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    return {
        "rps": rps,
        "requests": total,
        "p50_ms": lat("50"),
        "p99_ms": lat("99"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def openloop(url: str, rate: float, duration: float, body: Path) -> dict[str, float]:
    out = subprocess.run(
        pinned(
            "0",
            [
                sys.executable,
                str(ROOT / "loadtests" / "openloop.py"),
                url,
                "--rate",
                f"{rate:g}",
                "--duration",
                f"{duration:g}",
                "--body",
                str(body),
                *(["--native"] if NATIVE_OPEN_LOOP else []),
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    ap.add_argument(
        "--against",
        metavar="REV",
        help="also run the gateway of git revision REV (llhttp listener, both policies)",
    )
    a = ap.parse_args()
    if not shutil.which("wrk"):
        print("the benchmark needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="tailguard-bench-"))
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA.format(body=BODY.decode()))
    body = tmp / "body.json"
    body.write_bytes(BODY)
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spawn(
        cpu: str, argv: list[str], port: int, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        # `python -m gateway` run from `cwd` imports the gateway found there first
        p = subprocess.Popen(pinned(cpu, argv), env=env, stdout=subprocess.DEVNULL, cwd=cwd)
        procs.append(p)
        wait_port(port)
        return p

    try:
        sim_port = free_port()
        spawn(
            "0",
            [
                sys.executable,
                "-m",
                "gateway",
                "sim",
                "--port",
                str(sim_port),
                "--model",
                "classifier",
            ],
            sim_port,
        )
        up = f"http://127.0.0.1:{sim_port}"
        targets: dict[str, tuple[str, subprocess.Popen[bytes] | None]] = {"direct": (up, None)}
        bare_port = free_port()
        targets["bare"] = (
            f"http://127.0.0.1:{bare_port}",
            spawn(
                "1",
                [
                    sys.executable,
                    str(ROOT / "loadtests" / "baselines" / "bare_proxy.py"),
                    "--port",
                    str(bare_port),
                    "--upstream",
                    up,
                ],
                bare_port,
            ),
        )
        floor_port = free_port()
        targets["floor"] = (
            f"http://127.0.0.1:{floor_port}",
            spawn(
                "1",
                [
                    sys.executable,
                    str(ROOT / "loadtests" / "baselines" / "floor_proxy.py"),
                    "--port",
                    str(floor_port),
                    "--upstream",
                    up,
                ],
                floor_port,
            ),
        )
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx is not None:
            nginx_port = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, up_port=sim_port, port=nginx_port))
            targets["nginx"] = (
                f"http://127.0.0.1:{nginx_port}",
                spawn("1", [nginx, "-c", str(conf), "-p", str(tmp)], nginx_port),
            )
        gateways = (
            ("minimal", MINIMAL, "aiohttp"),
            ("full", FULL, "aiohttp"),
            ("minimal-h", MINIMAL, "httptools"),
            ("full-h", FULL, "httptools"),
        )
        runs: list[tuple[str, str, str, Path | None]] = [(*g, None) for g in gateways]
        if a.against is not None:
            # the earlier gateway from a detached worktree of that revision: same policies,
            # same machine, same rounds, so the change between them is measured interleaved
            old = tmp / "against"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.against],
                check=True,
                capture_output=True,
            )
            runs += [
                (f"minimal-h@{a.against}", MINIMAL, "httptools", old),
                (f"full-h@{a.against}", FULL, "httptools", old),
            ]
        for name, template, listener, source in runs:
            port, admin = free_port(), free_port()
            policy = tmp / f"{name}.yaml"
            policy.write_text(template.format(port=port, admin=admin, up=up, listener=listener))
            targets[name] = (
                f"http://127.0.0.1:{port}",
                spawn(
                    "1",
                    [
                        sys.executable,
                        "-m",
                        "gateway",
                        "run",
                        "--policy",
                        str(policy),
                        "--log-level",
                        "warning",
                    ],
                    port,
                    source,
                ),
            )

        closed: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for url, _ in targets.values():  # warm-up: pools, caches, first-call costs
            wrk(url + PATH, 1.0, lua)
        for r in range(a.rounds):
            for name, (url, proc) in targets.items():
                before = tree_cpu_seconds(proc.pid) if proc else 0.0
                res = wrk(url + PATH, a.duration, lua)
                if proc:
                    res["cpu_us"] = (tree_cpu_seconds(proc.pid) - before) / res["requests"] * 1e6
                closed[name].append(res)
                print(f"round {r + 1} {name:8s} {res}", file=sys.stderr)

        # about half the gateway's capacity (the Python generator, without a C compiler, can
        # send no more than PYTHON_OPEN_LOOP_MAX_RATE on time); `late_p99_ms` in the results
        # shows whether the generator held the schedule
        gw_rps = statistics.median(x["rps"] for x in closed["minimal"])
        cap = float("inf") if NATIVE_OPEN_LOOP else PYTHON_OPEN_LOOP_MAX_RATE
        rate = max(100.0, min(cap, round(gw_rps / 2, -2)))
        opened: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for r in range(a.rounds):
            for name, (url, _) in targets.items():
                res = openloop(url + PATH, rate, a.duration, body)
                opened[name].append(res)
                print(f"open {r + 1} {name:8s} {res}", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        if a.against is not None and (tmp / "against").exists():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "against")],
                check=False,
                capture_output=True,
            )
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in rows)

    direct_p50 = med(opened["direct"], "p50_ms")
    bare_cpu = med(closed["bare"], "cpu_us")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"medians of {a.rounds} interleaved rounds of {a.duration:g} s; "
        f"closed loop = wrk, 32 connections; open loop = {rate:g} req/s.",
        "",
        "| target | req/s (closed) | p50 / p99 ms (closed) | CPU µs/req | CPU vs bare | "
        "CPU vs nginx | p50 ms at fixed rate | added p50 vs direct |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    nginx_cpu = med(closed["nginx"], "cpu_us") if "nginx" in closed else None
    for name in targets:
        cpu = f"{med(closed[name], 'cpu_us'):.0f}" if name != "direct" else "—"
        ratio = f"{med(closed[name], 'cpu_us') / bare_cpu:.2f}x" if name != "direct" else "—"
        vs_nginx = (
            f"{med(closed[name], 'cpu_us') / nginx_cpu:.1f}x"
            if name != "direct" and nginx_cpu
            else "—"
        )
        p50o = med(opened[name], "p50_ms")
        added = f"+{p50o - direct_p50:.2f} ms" if name != "direct" else "—"
        lines.append(
            f"| {name} | {med(closed[name], 'rps'):,.0f} | {med(closed[name], 'p50_ms'):.2f} / "
            f"{med(closed[name], 'p99_ms'):.2f} | {cpu} | {ratio} | {vs_nginx} | {p50o:.2f} | "
            f"{added} |"
        )
    held = opened["direct"]
    lines += [
        "",
        f"Open-loop generator: {'native (openloop.c)' if NATIVE_OPEN_LOOP else 'Python'}; "
        f"against the backend alone it sent {med(held, 'sent'):,.0f} requests at "
        f"{med(held, 'rate') if 'rate' in held[0] else rate:,.0f} req/s, "
        f"{med(held, 'errors'):,.0f} failed, late p99 {med(held, 'late_p99_ms'):.2f} ms.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
