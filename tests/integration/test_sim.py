"""The simulated model server over real sockets: API shapes, faults, die/revive, control API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gateway.sim import Faults, Latency, SimControl, SimControlError, SimServer

MakeSim = Callable[..., Awaitable[SimServer]]
ROOT = Path(__file__).resolve().parent.parent.parent
INFER = {
    "id": "r1",
    "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    started: list[SimServer] = []

    async def make(**kw: Any) -> SimServer:
        kw.setdefault("seed", 1)
        kw.setdefault("name", f"sim{len(started)}")
        sim = SimServer(**kw)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """For state with nothing to await (a server-side counter): check until true or fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def assert_who(r: aiohttp.ClientResponse, sim: SimServer) -> None:
    assert r.headers["x-sim-name"] == sim.name
    assert r.headers["x-sim-region"] == sim.region


# --- API shapes -----------------------------------------------------------------------------


async def test_kserve_health_and_metadata(make_sim: MakeSim, client: aiohttp.ClientSession) -> None:
    sim = await make_sim(models=["classifier", "ranker"], region="eu-west")
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/ranker/ready", "/health"):
        async with client.get(sim.url + path) as r:
            assert r.status == 200, path
            assert await r.read() == b""
            assert_who(r, sim)
    for path in ("/v2/models/classifier", "/v2/models/classifier/versions/1"):
        async with client.get(sim.url + path) as r:
            meta = await r.json()
        assert meta["name"] == "classifier"
        assert meta["versions"] == ["1"] and meta["platform"] == "python"
        assert meta["inputs"][0]["datatype"] == meta["outputs"][0]["datatype"] == "FP32"
    async with client.get(sim.url + "/v2") as r:
        assert r.status == 200 and "name" in await r.json()
    async with client.get(sim.url + "/v2/models/nope/ready") as r:
        assert r.status == 404
        assert "nope" in (await r.json())["error"]
        assert_who(r, sim)
    async with client.get(sim.url + "/elsewhere") as r:
        assert r.status == 404 and "error" in await r.json()
        assert_who(r, sim)
    async with client.get(sim.url + "/v2/models/classifier/infer") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"


async def test_infer_answers_like_triton(make_sim: MakeSim, client: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    for path in ("/v2/models/classifier/infer", "/v2/models/classifier/versions/1/infer"):
        async with client.post(sim.url + path, json=INFER) as r:
            assert r.status == 200
            assert_who(r, sim)
            body = await r.json()
        assert body == {
            "id": "r1",
            "model_name": "classifier",
            "model_version": "1",
            "outputs": [
                {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": [2, 4, 6, 8]}
            ],
        }
    async with client.post(sim.url + "/v2/models/classifier/versions/2/infer", json=INFER) as r:
        assert r.status == 404 and "version 2" in (await r.json())["error"]
    async with client.post(sim.url + "/v2/models/other/infer", json=INFER) as r:
        assert r.status == 404 and "other" in (await r.json())["error"]
    bad = {"content-type": "application/json"}
    async with client.post(sim.url + "/v2/models/classifier/infer", data=b"{x", headers=bad) as r:
        assert r.status == 500  # deliberately like Triton: a client's bad JSON is a 500
        error = (await r.json())["error"]
        assert error.startswith("failed to parse the request JSON buffer: ")


async def test_infer_takes_bodies_larger_than_aiohttps_default(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    n = 224 * 224 * 3  # an image tensor: about 2 MiB as JSON
    body = {"inputs": [{"name": "INPUT0", "shape": [1, n], "datatype": "FP32", "data": [0.5] * n}]}
    async with client.post(sim.url + "/v2/models/classifier/infer", json=body) as r:
        assert r.status == 200
        assert (await r.json())["outputs"][0]["shape"] == [1, n]


async def test_tritonclient_http_parses_the_answers(make_sim: MakeSim) -> None:
    import tritonclient.http as triton

    sim = await make_sim(faults=Faults(unready_models=frozenset({"ranker"})),
                         models=["classifier", "ranker"])  # fmt: skip
    x = np.array([[0.5, 1.0, 1.5, 2.0]], dtype=np.float32)

    def call() -> tuple[list[np.ndarray], bool, bool, dict[str, Any]]:
        client = triton.InferenceServerClient(url=sim.url.removeprefix("http://"))
        try:
            outs = []
            for binary in (False, True):  # JSON data, and the binary tensor extension
                inp = triton.InferInput("INPUT0", [1, 4], "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                outs.append(client.infer("classifier", [inp]).as_numpy("OUTPUT0"))
            return (
                outs,
                client.is_model_ready("classifier"),
                client.is_model_ready("ranker"),
                client.get_model_metadata("classifier"),
            )
        finally:
            client.close()

    outs, ready, unready, meta = await asyncio.to_thread(call)
    for out in outs:
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, x * 2)
    assert ready and not unready
    assert meta["name"] == "classifier"


async def test_openai_models_and_chat(make_sim: MakeSim, client: aiohttp.ClientSession) -> None:
    sim = await make_sim(models=["m", "n"])
    async with client.get(sim.url + "/v1/models") as r:
        assert [m["id"] for m in (await r.json())["data"]] == ["m", "n"]
    async with client.post(sim.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200
        assert_who(r, sim)
        body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["usage"]["completion_tokens"] == 3
    async with client.post(sim.url + "/v1/chat/completions", json={"model": "m"}) as r:
        assert r.status == 400
        assert "messages" in (await r.json())["error"]["message"]


async def test_sse_events_arrive_one_chunk_each_with_the_stream_delay(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    delay = 0.03
    sim = await make_sim(faults=Faults(stream_delay_ms=delay * 1000))
    arrivals: list[float] = []
    events: list[bytes] = []
    pending = b""
    started = time.monotonic()
    async with client.post(
        sim.url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 5}
    ) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        async for data, end_of_chunk in r.content.iter_chunks():
            pending += data
            if end_of_chunk:
                events.append(pending)
                arrivals.append(time.monotonic() - started)
                pending = b""
    # role, 5 tokens, finish, [DONE]: every HTTP chunk is exactly one whole SSE event
    assert len(events) == 8
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "one two three one two"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # paced, not buffered: the events are spread over about 7 delays
    assert arrivals[-1] - arrivals[0] > 0.5 * 7 * delay
    assert arrivals == sorted(arrivals)


async def test_a_client_leaving_mid_stream_is_not_an_error(
    make_sim: MakeSim, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await make_sim(faults=Faults(stream_delay_ms=20))
    for _ in range(3):
        async with client.post(
            sim.url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 50}
        ) as r:
            await r.content.readline()
            r.close()  # walk away after the first event
    await eventually(lambda: sim.stats.in_flight == 0)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


async def test_predict_echoes_the_request(make_sim: MakeSim, client: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    async with client.post(sim.url + "/predict", json={"x": [1, 2]}) as r:
        assert await r.json() == {"echo": {"x": [1, 2]}, "served_by": sim.name}
    async with client.post(sim.url + "/predict", data=b"nope") as r:
        assert r.status == 400


# --- faults ---------------------------------------------------------------------------------


async def test_injected_errors_carry_status_body_and_retry_after(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(faults=Faults(error_rate=1.0, error_status=503, retry_after=2))
    async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "2"
        assert "error" in await r.json()
        assert_who(r, sim)
    async with client.post(sim.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 503
        assert (await r.json())["error"]["type"] == "server_error"  # OpenAI's error shape
    async with client.post(sim.url + "/predict", json={}) as r:
        assert r.status == 503
    # health and control routes are never faulted
    async with client.get(sim.url + "/v2/health/ready") as r:
        assert r.status == 200
    async with client.get(sim.url + "/_sim/stats") as r:
        assert r.status == 200
    assert sim.stats.faults["error"] == 3


async def test_reset_drops_the_connection_without_an_answer(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(faults=Faults(reset_rate=1.0))
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
            await r.read()
    assert sim.stats.faults["reset"] == 1


async def test_hang_never_answers_and_lets_go_when_the_client_leaves(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(faults=Faults(hang_rate=1.0))
    with pytest.raises(TimeoutError):
        async with client.post(
            sim.url + "/v2/models/classifier/infer",
            json=INFER,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as r:
            await r.read()
    assert sim.stats.faults["hang"] == 1
    await eventually(lambda: sim.stats.in_flight == 0)  # the handler ended with the connection


async def test_truncated_answers_are_payload_errors(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(faults=Faults(truncate_rate=1.0))
    for path, body in (("/v2/models/classifier/infer", INFER), ("/v1/chat/completions", CHAT)):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.post(sim.url + path, json=body) as r:
                assert r.status == 200
                assert int(r.headers["Content-Length"]) > 0
                await r.read()
    # a stream that started and then broke: some events, then a payload error, never [DONE]
    events: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.post(
            sim.url + "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(line)
    assert events and b"data: [DONE]\n" not in events
    assert sim.stats.faults["truncate"] == 3


async def test_unready_models_answer_400_like_triton(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(models=["classifier", "ranker"])
    sim.faults = Faults(unready_models=frozenset({"classifier"}))
    async with client.get(sim.url + "/v2/models/classifier/ready") as r:
        assert r.status == 400 and await r.read() == b""
    async with client.get(sim.url + "/v2/models/ranker/ready") as r:
        assert r.status == 200
    async with client.get(sim.url + "/v2/health/ready") as r:
        assert r.status == 400  # Triton's strict readiness: ready only when every model is
    async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
        assert r.status == 400 and "not ready" in (await r.json())["error"]
    async with client.post(sim.url + "/v2/models/ranker/infer", json=INFER) as r:
        assert r.status == 200
    sim.faults = Faults(ready=False)
    async with client.get(sim.url + "/v2/health/live") as r:
        assert r.status == 200
    async with client.get(sim.url + "/v2/health/ready") as r:
        assert r.status == 400 and await r.read() == b""
    async with client.get(sim.url + "/health") as r:
        assert r.status == 503
    assert sim.stats.faults["unready"] == 1


async def test_latency_delays_the_answer(make_sim: MakeSim, client: aiohttp.ClientSession) -> None:
    sim = await make_sim(faults=Faults(latency=Latency("fixed", 80)))
    started = time.monotonic()
    async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
        assert r.status == 200
    assert time.monotonic() - started >= 0.075
    started = time.monotonic()
    async with client.get(sim.url + "/v2/health/live") as r:  # probes are not delayed
        assert r.status == 200
    assert time.monotonic() - started < 0.075


async def test_seeded_servers_draw_the_same_faults(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    faults = Faults(error_rate=0.5)
    a, b = await make_sim(seed=9, faults=faults), await make_sim(seed=9, faults=faults)

    async def statuses(sim: SimServer) -> list[int]:
        out = []
        for _ in range(30):
            async with client.post(sim.url + "/predict", json={}) as r:
                out.append(r.status)
        return out

    seen = await statuses(a)
    assert seen == await statuses(b)
    assert set(seen) == {200, 503}


# --- die, revive, control -------------------------------------------------------------------


async def test_die_refuses_and_resets_then_revive_serves_on_the_same_port(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(faults=Faults(hang_rate=1.0))
    port = sim.port
    hung = asyncio.ensure_future(client.post(sim.url + "/v2/models/classifier/infer", json=INFER))
    await eventually(lambda: sim.stats.in_flight == 1)
    await sim.die()
    await eventually(lambda: sim.stats.in_flight == 0)  # its handler ended with the connection
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        await hung  # the in-flight request is cut, as by a crashed server
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        async with client.get(sim.url + "/v2/health/live"):
            pass
    assert isinstance(refused.value.os_error, ConnectionRefusedError)
    assert not sim.alive
    await sim.revive()
    assert sim.port == port
    sim.faults = Faults()
    async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
        assert r.status == 200


async def test_control_port_survives_die(make_sim: MakeSim, client: aiohttp.ClientSession) -> None:
    sim = await make_sim(control_port=0)
    assert sim.control_url != sim.url
    control = SimControl(sim.control_url, client)
    await control.die()
    assert (await control.stats())["alive"] is False
    with pytest.raises(aiohttp.ClientConnectorError):
        async with client.get(sim.url + "/v2/health/live"):
            pass
    assert (await control.revive())["alive"] is True
    async with client.get(sim.url + "/v2/health/live") as r:
        assert r.status == 200
    # the control port serves the control API only
    async with client.get(sim.control_url + "/v2/health/live") as r:
        assert r.status == 404
    # die for a while: it comes back by itself
    assert (await control.die(for_=0.1))["revive_in"] == 0.1
    assert not sim.alive
    await eventually(lambda: sim.alive)
    async with client.get(sim.url + "/v2/health/live") as r:
        assert r.status == 200


async def test_die_through_the_main_port_answers_first(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    async with client.post(sim.url + "/_sim/die") as r:
        assert r.status == 200
        assert (await r.json())["alive"] is False
    with pytest.raises(aiohttp.ClientConnectorError):
        async with client.get(sim.url + "/v2/health/live"):
            pass
    await sim.revive()
    async with client.get(sim.url + "/v2/health/live") as r:
        assert r.status == 200


async def test_control_api_sets_faults_and_reads_stats(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(name="ctl")
    control = SimControl(sim.url, client)
    put = await control.set_faults(error_rate=0.25, latency={"kind": "fixed", "ms": 1})
    assert put["error_rate"] == 0.25 and sim.faults.latency == Latency("fixed", 1)
    patched = await control.patch_faults(reset_rate=0.1, latency={"ms": 2})
    assert patched["error_rate"] == 0.25 and patched["latency"]["ms"] == 2
    assert sim.faults == Faults(error_rate=0.25, reset_rate=0.1, latency=Latency("fixed", 2))
    assert await control.faults() == sim.faults.to_dict()
    assert await control.clear_faults() == Faults().to_dict()
    assert sim.faults == Faults()

    with pytest.raises(SimControlError) as bad:
        await control.set_faults(error_rate=2)
    assert bad.value.status == 400 and "error_rate must be between 0 and 1" in bad.value.message
    with pytest.raises(SimControlError, match="unknown faults field"):
        await control.patch_faults(typo=1)
    with pytest.raises(SimControlError, match="'for' must be"):
        await control.die(for_=-1)
    async with client.put(sim.url + "/_sim/faults", data=b"{") as r:
        assert r.status == 400 and "invalid JSON" in (await r.json())["error"]
    async with client.get(sim.url + "/_sim/nope") as r:
        assert r.status == 404
    assert sim.alive and sim.faults == Faults()

    async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
        assert r.status == 200
    stats = await control.stats()
    assert stats["name"] == "ctl" and stats["total"] == 1  # control calls are not counted
    assert (await control.reset_stats())["total"] == 0
    assert sim.stats.total == 0


async def test_stats_count_kinds_models_and_faults(
    make_sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(models=["classifier", "m"])
    async with client.post(sim.url + "/v2/models/classifier/infer", json=INFER) as r:
        await r.read()
    async with client.post(sim.url + "/v1/chat/completions", json=CHAT) as r:
        await r.read()
    async with client.get(sim.url + "/v2/health/ready") as r:
        await r.read()
    async with client.get(sim.url + "/v2/models/classifier/ready") as r:
        await r.read()
    async with client.get(sim.url + "/v1/models") as r:
        await r.read()
    sim.faults = Faults(error_rate=1.0)
    async with client.post(sim.url + "/v1/chat/completions", json=CHAT) as r:
        await r.read()
    stats = sim.stats.to_dict()
    assert stats["total"] == 6
    assert stats["by_kind"] == {"infer": 1, "chat": 2, "health": 2, "other": 1}
    assert stats["by_model"] == {"classifier": 1, "m": 2}
    assert stats["faults"] == {"error": 1}
    assert stats["in_flight"] == 0


def test_die_and_revive_under_uvloop() -> None:
    """The command and the demo run on uvloop: the crash must look the same there."""
    import uvloop

    async def scenario() -> None:
        async with SimServer(name="uv") as sim, aiohttp.ClientSession() as client:
            async with client.get(sim.url + "/v2/health/live") as r:
                assert r.status == 200
            sim.faults = Faults(hang_rate=1.0)
            hung = asyncio.ensure_future(client.post(sim.url + "/predict", json={}))
            await eventually(lambda: sim.stats.in_flight == 1)
            await sim.die()
            with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
                await hung
            with pytest.raises(aiohttp.ClientConnectorError):
                async with client.get(sim.url + "/v2/health/live"):
                    pass
            await sim.revive()
            async with client.get(sim.url + "/v2/health/live") as r:
                assert r.status == 200

    uvloop.run(scenario())


def test_sim_command_prints_where_it_listens_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.sim", "--port", "0", "--name", "cmd",
         "--region", "r1", "--model", "a", "--model", "b", "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("sim cmd listening on http://127.0.0.1:"), line
        url = line.split()[4]
        from urllib.request import urlopen

        with urlopen(url + "/v1/models", timeout=5) as r:
            assert [m["id"] for m in json.load(r)["data"]] == ["a", "b"]
            assert r.headers["x-sim-region"] == "r1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
