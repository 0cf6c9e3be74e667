"""Three `tailguard run` processes behind HAProxy, one Redis, open-loop traffic, replicas lost.

Mid-run one replica is SIGKILLed (it stays dead) and another is stopped with SIGTERM and
started again. What must hold, measured from the client's side of HAProxy:

- at least 99.9 % of requests succeed (HAProxy retries and redispatches what a dying
  replica could not answer; a draining replica finishes what it accepted);
- one tenant's shared rate limit holds within ±10 % of its budget across the replicas;
- a canary rollback asked of one replica is followed by every live replica within 2 s.

The load-balancer settings are those docs/deploy.md recommends (deploy/haproxy/haproxy.cfg).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import INFER_BODY
from tests.redis_server import RedisServer, free_port, private_redis

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
INFER = "/v2/models/classifier/infer"
RATE, BURST = 40.0, 40

# The store timeout is generous: Redis stays up here, and a call that timed out on a loaded
# test host would be decided on the replica's local bucket, which is not what is measured.
POLICY = """\
version: 1
gateway: {{drain_timeout: 5s}}
state: {{store: redis, url: "{redis}", key_prefix: "hap:", timeout: 500ms}}
backends:
  stable: {{protocol: kserve-v2, endpoints: [{{url: "{stable}"}}]}}
  candidate: {{protocol: kserve-v2, endpoints: [{{url: "{candidate}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: stable, weight: 100}}, {{backend: candidate, weight: 0}}]
    timeout: 2s
    rate_limit: {{key: header, header: x-tenant, rate: {rate:g}/s, burst: {burst}}}
    canary: {{backend: candidate, steps: [20, 50], interval: 1h}}
"""


def haproxy_config(template: Path, listen: int, replicas: list[Replica]) -> str:
    """The shipped configuration with this test's ports."""
    servers = "\n".join(
        f"    server gw{i} 127.0.0.1:{r.port} check port {r.admin_port}"
        for i, r in enumerate(replicas)
    )
    text = template.read_text()
    text = text.replace("bind :8080", f"bind 127.0.0.1:{listen}")
    start = text.index("    # servers")
    end = text.index("\n", text.index("# end servers", start))
    return text[:start] + servers + text[end:]


def start_haproxy(binary: str, cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class Replica:
    """`tailguard run` on fixed ports, so that a restart comes back where HAProxy looks."""

    def __init__(self, policy: Path, log: Path) -> None:
        self.policy = policy
        self.log = log  # stderr of every run, so a replica that exits says why
        self.port, self.admin_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--policy", str(self.policy),
                 "--listen", f"127.0.0.1:{self.port}",
                 "--admin-listen", f"127.0.0.1:{self.admin_port}",
                 "--log-level", "warning", "--no-watch"],
                stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
            )  # fmt: skip

    def said(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(400):
            try:
                async with http.get(f"{self.admin}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert self.proc is not None and self.proc.poll() is None, (
                f"replica exited ({self.proc.returncode if self.proc else None}):\n{self.said()}"
            )
            await asyncio.sleep(0.05)
        raise AssertionError(f"replica did not become ready:\n{self.said()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 30)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = private_redis()
    try:
        yield server
    finally:
        server.close()


class Sim:
    """`tailguard sim` in its own process: the test's event loop only drives the client."""

    def __init__(self, seed: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--port", str(self.port),
             "--model", "classifier", "--seed", str(seed)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def backends() -> Iterator[tuple[Sim, Sim]]:
    stable, candidate = Sim(1), Sim(2)
    try:
        yield stable, candidate
    finally:
        stable.stop()
        candidate.stop()


async def test_replicas_behind_haproxy_survive_a_kill_and_a_restart(
    redis: RedisServer, backends: tuple[Sim, Sim], tmp_path: Path
) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is required (.ci/run installs Debian's package)")
    stable, candidate = backends
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(redis=redis.url, stable=stable.url, candidate=candidate.url,
                                    rate=RATE, burst=BURST))  # fmt: skip
    replicas = [Replica(policy, tmp_path / f"replica-{k}.log") for k in range(3)]
    lb_port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(ROOT / "deploy" / "haproxy" / "haproxy.cfg", lb_port, replicas))
    check = await asyncio.to_thread(
        subprocess.run, [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    lb: subprocess.Popen[bytes] | None = None
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for r in replicas:
                r.start()
            for r in replicas:
                await r.ready(http)
            lb = start_haproxy(haproxy, cfg)
            url = f"http://127.0.0.1:{lb_port}{INFER}"
            for _ in range(200):
                try:
                    async with http.post(url, json=INFER_BODY) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            await run_scenario(http, url, replicas)
        finally:
            if lb is not None:
                lb.terminate()
                lb.wait(timeout=10)
            for r in replicas:
                r.kill()


async def run_scenario(http: aiohttp.ClientSession, url: str, replicas: list[Replica]) -> None:
    duration, rate, limited_rate = 10.0, 80.0, 60.0
    general: list[int] = []
    limited: list[int] = []

    async def one(k: int, tenant: str, out: list[int]) -> None:
        try:
            async with http.post(url, json=INFER_BODY, headers={"x-tenant": tenant}) as r:
                await r.read()
                out.append(r.status)
        except aiohttp.ClientError:
            out.append(0)

    async def open_loop(rps: float, tenant_of: object, out: list[int]) -> float:
        tasks = []
        t0 = time.monotonic()
        k = 0
        while (now := time.monotonic()) < t0 + duration:
            due = t0 + k / rps
            if due > now:
                await asyncio.sleep(due - now)
            tenant = tenant_of(k) if callable(tenant_of) else str(tenant_of)
            tasks.append(asyncio.ensure_future(one(k, tenant, out)))
            k += 1
        elapsed = time.monotonic() - t0
        await asyncio.gather(*tasks)
        return elapsed

    async def faults() -> float:
        await asyncio.sleep(2.0)
        replicas[0].kill()  # SIGKILL: in-flight requests on it are lost to HAProxy's retries
        await asyncio.sleep(1.5)
        assert await replicas[1].terminate() == 0  # SIGTERM: drains, exits cleanly
        replicas[1].start()
        await replicas[1].ready(http)
        await asyncio.sleep(1.0)
        # an operator rolls the canary back on one replica; every live one must follow
        async with http.post(f"{replicas[2].admin}/admin/canary/classify/rollback") as r:
            assert r.status == 200, await r.text()
        t0 = time.monotonic()
        while True:
            phases = []
            for rep in replicas[1:]:
                async with http.get(f"{rep.admin}/admin/status") as r:
                    status = await r.json()
                route = next(x for x in status["routes"] if x["name"] == "classify")
                phases.append(route["canary"]["phase"])
            if all(p == "rolled-back" for p in phases) or time.monotonic() - t0 > 10:
                return time.monotonic() - t0
            await asyncio.sleep(0.05)

    elapsed, limited_elapsed, followed = await asyncio.gather(
        open_loop(rate, lambda k: f"t{k % 500}", general),
        open_loop(limited_rate, "acme", limited),
        faults(),
    )
    ok = general.count(200)
    failures = {s: general.count(s) for s in set(general) if s != 200}
    allowed = limited.count(200)
    expected = BURST + RATE * limited_elapsed
    print(
        f"\n{len(general)} requests in {elapsed:.1f}s: {ok / len(general):.4%} succeeded "
        f"(failures {failures}); tenant limit: {allowed} passed, {expected:.0f} budgeted; "
        f"canary rollback followed by every live replica in {followed:.2f}s"
    )
    assert followed < 2.0
    assert ok >= 0.999 * len(general), failures
    assert set(limited) <= {200, 429}, {s: limited.count(s) for s in set(limited)}
    assert abs(allowed - expected) <= 0.10 * expected, (allowed, expected)
