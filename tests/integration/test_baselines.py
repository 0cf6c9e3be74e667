"""The benchmark's yardsticks answer what the backend answers: a proxy that got the request or
the answer wrong would make every ratio against it meaningless."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.sim.faults import Faults
from tests.integration.conftest import INFER_BODY, SimFactory
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ("bare_proxy.py", "floor_proxy.py")
INFER = "/v2/models/classifier/infer"


async def started(script: str, upstream: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "loadtests" / "baselines" / script),
        "--port", str(port), "--upstream", upstream,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None:
                err = await proc.stderr.read() if proc.stderr is not None else b""
                pytest.fail(f"{script} exited: {err.decode()}")
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return proc, f"http://127.0.0.1:{port}"
    proc.kill()
    pytest.fail(f"{script} did not listen on {port}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # one connection: every request after the first must reuse it (keep-alive)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        yield s


@pytest.mark.parametrize("script", BASELINES)
async def test_a_baseline_answers_as_the_backend_does(
    script: str, sims: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sims()
    proc, url = await started(script, sim.url)
    try:
        async with session.post(sim.url + INFER, json=INFER_BODY) as r:
            direct_status, direct_body = r.status, await r.read()
        for _ in range(20):
            async with session.post(url + INFER, json=INFER_BODY) as r:
                assert (r.status, await r.read()) == (direct_status, direct_body)
                assert r.headers["Content-Type"].startswith("application/json")
        async with session.get(url + "/v2/models/no-such-model") as r:
            assert r.status == 404  # the backend's own answer, passed through
        sim.faults = Faults(error_rate=1.0, error_status=503)
        async with session.post(url + INFER, json=INFER_BODY) as r:
            assert r.status == 503
        assert sim.stats.by_kind["infer"] == 22
    finally:
        proc.terminate()
        await proc.wait()
