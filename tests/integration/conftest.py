"""Real sockets on port 0: simulated backends, a gateway in-process, an aiohttp client."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import Gateway
from gateway.sim import SimServer

SimFactory = Callable[..., Awaitable[SimServer]]
GatewayFactory = Callable[[str], Awaitable[Gateway]]
# a gateway whose spans go to an in-memory exporter the test reads
Traced = Callable[[str], Awaitable[tuple[Gateway, InMemorySpanExporter]]]


@pytest.fixture
async def sims() -> AsyncIterator[SimFactory]:
    started: list[SimServer] = []

    async def make(**kw: Any) -> SimServer:
        kw.setdefault("seed", 1000 + len(started))
        s = SimServer(**kw)
        await s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        await s.stop()


@pytest.fixture
async def gateway(tmp_path: Path, listener: str) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def make(policy: str) -> Gateway:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(textwrap.dedent(policy))
        gw = Gateway(
            path, listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0), listener=listener
        )
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


INFER_BODY = {
    "id": "r1",
    "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
}


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    started: list[Gateway] = []

    async def make(policy: str) -> tuple[Gateway, InMemorySpanExporter]:
        path = tmp_path / f"traced-policy-{len(started)}.yaml"
        path.write_text(textwrap.dedent(policy))
        exporter = InMemorySpanExporter()
        gw = Gateway(
            path,
            listen=("127.0.0.1", 0),
            admin_listen=("127.0.0.1", 0),
            span_processor=SimpleSpanProcessor(exporter),
        )
        await gw.start()
        started.append(gw)
        return gw, exporter

    yield make
    for gw in started:
        await gw.stop()
