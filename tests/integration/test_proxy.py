"""The spine over real sockets: client → gateway → simulated backends in two regions."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter

import aiohttp
import numpy as np
import pytest

from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

# the HTTP a client sees must not tell the data listeners apart
pytestmark = pytest.mark.both_listeners

ONE_BACKEND = """
version: 1
gateway: {{region: us-east}}
backends:
  clf:
    protocol: kserve-v2
    endpoints:
      - {{url: "{a}", region: us-east}}
  chat:
    protocol: openai
    endpoints:
      - {{url: "{a}", region: us-east}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: {timeout}
  - name: chat
    match: {{path_prefix: /v1/}}
    split: [{{backend: chat, weight: 100}}]
    timeout: 5s
"""


async def test_infer_is_proxied_with_tailguard_headers(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"], region="us-east", name="a")
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    async with http.post(
        f"{gw.listening.url}/v2/models/classifier/infer?x=1", json=INFER_BODY
    ) as r:
        body = await r.json()
        assert r.status == 200
        assert r.headers["x-tailguard-route"] == "classify"
        assert r.headers["x-tailguard-backend"] == "clf"
        assert r.headers["x-tailguard-endpoint"] == sim.url
        assert r.headers["x-sim-name"] == "a"
        assert r.headers["x-request-id"]
        assert "connection" not in {k.lower() for k in r.headers if k.lower() == "keep-alive"}
    assert body["id"] == "r1"
    assert body["model_name"] == "classifier"
    assert body["outputs"][0]["shape"] == [1, 4]


async def test_client_request_id_is_kept(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    async with http.post(
        f"{gw.listening.url}/v2/models/classifier/infer",
        json=INFER_BODY,
        headers={"x-request-id": "abc-123"},
    ) as r:
        assert r.headers["x-request-id"] == "abc-123"


async def test_client_errors_are_json_and_never_reach_a_backend(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    base = gw.listening.url
    sim.stats.reset()

    async with http.get(f"{base}/nowhere") as r:
        err = await r.json()
        assert r.status == 404
        assert err["error"]["code"] == "route_not_found"
        assert err["error"]["request_id"] == r.headers["x-request-id"]

    async with http.post(
        f"{base}/v2/models/classifier/infer",
        data=b"{not json",
        headers={"content-type": "application/json"},
    ) as r:
        assert r.status == 400
        # KServe v2's error shape; the gateway's code in a header
        assert isinstance((await r.json())["error"], str)
        assert r.headers["x-tailguard-error"] == "bad_request"

    async with http.post(
        f"{base}/v2/models/classifier/infer", data=io.BytesIO(b"x" * (5 << 20))
    ) as r:
        assert r.status == 413
        assert "exceeds the limit" in (await r.json())["error"]
        assert r.headers["x-tailguard-error"] == "body_too_large"

    assert sim.stats.total == 0


async def test_route_timeout_gives_504_not_a_hang(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="300ms"))
    assert gw.listening is not None
    sim.faults = sim.faults.replace(hang_rate=1.0)
    started = time.monotonic()
    async with http.post(
        f"{gw.listening.url}/v2/models/classifier/infer",
        json=INFER_BODY,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        err = await r.json()
    elapsed = time.monotonic() - started
    assert r.status == 504
    assert r.headers["x-tailguard-error"] == "deadline_exceeded"
    assert isinstance(err["error"], str)
    # answered near the route's 300 ms deadline, far from the client's own 10 s limit
    assert elapsed < 10 * 0.3


async def test_dead_backend_gives_502_with_the_reason(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    await sim.die()
    async with http.post(f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY) as r:
        err = await r.json()
    assert r.status == 502
    assert r.headers["x-tailguard-error"] == "upstream_failed"
    assert "connect" in err["error"]


async def test_backend_error_status_is_passed_through(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    sim.faults = sim.faults.replace(error_rate=1.0, error_status=503)
    async with http.post(f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY) as r:
        assert r.status == 503  # no retries configured: the backend's own answer, as it was
        assert r.headers["x-sim-name"] == sim.name
        assert r.headers["x-tailguard-attempts"] == "1"


async def test_sse_stream_passes_through_chunk_by_chunk(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    sim.faults = sim.faults.replace(stream_delay_ms=60)
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    started = time.monotonic()
    arrivals: list[float] = []
    events: list[str] = []
    async with http.post(
        f"{gw.listening.url}/v1/chat/completions",
        json={
            "model": "m",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c d e f"}],
        },
    ) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - started)
                events.append(line[6:].strip().decode())
    assert events[-1] == "[DONE]"
    assert len(events) >= 4
    json.loads(events[0])
    # streamed, not buffered: the first event arrives well before the last one
    assert arrivals[0] < arrivals[-1] * 0.5


def triton_infer(base_url: str, *, binary: bool) -> np.ndarray:
    """One infer with tritonclient.http (blocking: run it in a thread), tensors JSON or binary."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    try:
        inp = triton.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32), binary_data=binary)
        out = triton.InferRequestedOutput("OUTPUT0", binary_data=binary)
        result = client.infer("classifier", [inp], outputs=[out])
        return result.as_numpy("OUTPUT0")  # type: ignore[no-any-return]
    finally:
        client.close()


async def test_tritonclient_http_through_the_gateway(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    out = await asyncio.to_thread(triton_infer, gw.listening.url, binary=False)
    assert out.shape == (1, 4)


TWO_REGIONS = """
version: 1
gateway: {{region: us-east}}
backends:
  v1:
    protocol: kserve-v2
    endpoints:
      - {{url: "{a}", region: us-east}}
      - {{url: "{b}", region: us-east}}
      - {{url: "{c}", region: eu-west}}
  v2:
    protocol: kserve-v2
    endpoints:
      - {{url: "{d}", region: us-east}}
routes:
  - name: classify
    match: {{model: classifier}}
    split:
      - {{backend: v1, weight: 80}}
      - {{backend: v2, weight: 20}}
    {sticky}
    timeout: 2s
"""


async def _names(
    http: aiohttp.ClientSession, url: str, n: int, user: str | None = None
) -> list[tuple[str, str]]:
    async def one(i: int) -> tuple[str, str]:
        headers = {"x-user-id": user or f"u{i}"}
        async with http.post(
            f"{url}/v2/models/classifier/infer", json=INFER_BODY, headers=headers
        ) as r:
            assert r.status == 200
            return r.headers["x-tailguard-backend"], r.headers["x-sim-region"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_weighted_split_and_local_region_first(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b, d = [await sims(models=["classifier"], region="us-east") for _ in range(3)]
    c = await sims(models=["classifier"], region="eu-west")
    gw = await gateway(TWO_REGIONS.format(a=a.url, b=b.url, c=c.url, d=d.url, sticky=""))
    assert gw.listening is not None
    seen = await _names(http, gw.listening.url, 600)
    backends = Counter(x for x, _ in seen)
    regions = Counter(y for _, y in seen)
    assert 0.72 < backends["v1"] / 600 < 0.88
    assert regions == Counter({"us-east": 600})  # all healthy: the other region gets nothing
    assert c.stats.total == 0


async def test_sticky_header_keeps_a_user_on_one_backend(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a, b, d = [await sims(models=["classifier"], region="us-east") for _ in range(3)]
    c = await sims(models=["classifier"], region="eu-west")
    gw = await gateway(
        TWO_REGIONS.format(a=a.url, b=b.url, c=c.url, d=d.url, sticky="sticky: {header: x-user-id}")
    )
    assert gw.listening is not None
    for user in ("alice", "bob", "carol", "dave"):
        seen = {x for x, _ in await _names(http, gw.listening.url, 20, user=user)}
        assert len(seen) == 1, (user, seen)


async def test_admin_port_serves_metrics_and_readiness(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    assert gw.listening.admin_port != gw.listening.port
    async with http.post(f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY) as r:
        assert r.status == 200
    async with http.get(f"{gw.listening.admin_url}/readyz") as r:
        assert r.status == 200
    async with http.get(f"{gw.listening.admin_url}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{gw.listening.admin_url}/metrics") as r:
        text = await r.text()
    assert (
        'tailguard_requests_total{backend="clf",code_class="2xx",protocol="http",route="classify"} 1.0'
        in text
    )
    assert "tailguard_upstream_attempt_duration_seconds_bucket" in text
    assert "tailguard_requests_in_flight 0.0" in text
    # the data port does not serve admin paths
    async with http.get(f"{gw.listening.url}/metrics") as r:
        assert r.status == 404


async def test_a_stream_that_breaks_ends_with_an_error_event_not_a_clean_end(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    sim.faults = sim.faults.replace(truncate_rate=1.0, stream_delay_ms=5)
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    body = await (
        await http.post(
            f"{gw.listening.url}/v1/chat/completions",
            json={
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": "a b c d"}],
            },
        )
    ).read()
    text = body.decode()
    assert "data: [DONE]" not in text
    assert "event: error" in text
    assert '"code": "stream_aborted"' in text
    assert text.index("data: {") < text.index("event: error")  # it had started streaming
    async with http.get(f"{gw.listening.admin_url}/metrics") as r:
        metrics = await r.text()
    # the broken stream counts against the backend
    assert 'outcome="malformed"' in metrics or 'outcome="reset"' in metrics


async def test_json_a_backend_chokes_on_is_the_clients_fault(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    # shaped like JSON, so only the backend finds out (Triton answers 500)
    for _ in range(3):
        async with http.post(
            f"{gw.listening.url}/v2/models/classifier/infer",
            data=b'{"inputs": [}',
            headers={"content-type": "application/json"},
        ) as r:
            assert r.status == 400
            assert r.headers["x-tailguard-error"] == "bad_request"
    counted = gw.metrics.attempts.labels("clf", sim.url, "client_error")._value.get()
    assert counted == 3
    assert gw.metrics.attempts.labels("clf", sim.url, "5xx")._value.get() == 0


async def test_binary_tensor_requests_pass_the_json_check(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(ONE_BACKEND.format(a=sim.url, timeout="2s"))
    assert gw.listening is not None
    out = await asyncio.to_thread(triton_infer, gw.listening.url, binary=True)
    assert out.tolist() == [[2.0, 4.0, 6.0, 8.0]]
