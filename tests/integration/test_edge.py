"""The edge as real clients see it: content codings, error shapes, paths, auth, lifetimes,
slow clients, and the rules that decide what may be sent twice. Each test would have
caught a defect a new user met against a real Triton with real clients."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
import numpy as np
import pytest

from gateway.app import Gateway
from gateway.resilience.outcome import Outcome
from gateway.sim import SimServer
from gateway.sim.faults import Faults, Latency
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

# the HTTP a client sees must not tell the data listeners apart
pytestmark = pytest.mark.both_listeners

KSERVE = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{endpoints}]
    circuit_breaker: {{window: 10s, minimum_calls: 4, failure_rate: 50%, open_for: 30s}}
    outlier_detection: {{consecutive_failures: 3, base_ejection: 30s, max_ejection_percent: 50%}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: {timeout}
"""


def kserve(*sims: SimServer, timeout: str = "2s") -> str:
    return KSERVE.format(endpoints=", ".join(f'{{url: "{s.url}"}}' for s in sims), timeout=timeout)


def infer_url(gw: Gateway, model: str = "classifier") -> str:
    assert gw.listening is not None
    return f"{gw.listening.url}/v2/models/{model}/infer"


def attempts(gw: Gateway, sim: SimServer, outcome: Outcome) -> float:
    return gw.metrics.attempts.labels("clf", sim.url, outcome.value)._value.get()


async def raw_request(gw: Gateway, data: bytes, *, keep: bool = False) -> bytes:
    """Send bytes on a fresh connection; the whole answer (until close, or the first answer)."""
    assert gw.listening is not None
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    try:
        writer.write(data)
        await writer.drain()
        if keep:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            return head + await reader.readexactly(length)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- 1. content codings ----------------------------------------------------------------------


async def test_gzip_answers_pass_through_and_never_count_against_a_backend(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=["classifier"])
    b = await sims(models=["classifier"])
    gw = await gateway(kserve(a, b))
    for _ in range(20):
        # aiohttp asks for gzip by default; the backend (like Triton) answers gzip
        async with http.post(infer_url(gw), json=INFER_BODY) as r:
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
            assert (await r.json())["outputs"][0]["shape"] == [1, 4]
    for sim in (a, b):
        assert attempts(gw, sim, Outcome.MALFORMED) == 0
        state = next(s for s in gw.snapshot.backends["clf"].states if s.spec.url == sim.url)
        assert state.breaker is not None and state.breaker.state(gw.clock.now()).name == "CLOSED"
    assert attempts(gw, a, Outcome.SUCCESS) + attempts(gw, b, Outcome.SUCCESS) == 20


async def test_encoded_request_bodies_reach_the_backend_byte_for_byte(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(kserve(sim))
    sent = gzip.compress(json.dumps(INFER_BODY).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with http.post(infer_url(gw), data=sent, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["outputs"][0]["data"]
    seen = sim.stats.last
    assert seen is not None
    assert seen.body == sent
    assert seen.headers["Content-Encoding"] == "gzip"
    assert int(seen.headers["Content-Length"]) == len(sent)
    # a body that is not what its coding says is the client's fault, and never reaches the backend
    sim.stats.reset()
    async with http.post(infer_url(gw), data=b"not gzip at all", headers=headers) as r:
        assert r.status == 400
    assert sim.stats.total == 0


def triton_compressed(base_url: str) -> np.ndarray:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    try:
        inp = triton.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32), binary_data=False)
        result = client.infer(
            "classifier",
            [inp],
            request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
        return result.as_numpy("OUTPUT0")  # type: ignore[no-any-return]
    finally:
        client.close()


async def test_tritonclient_with_compression_both_ways(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(kserve(sim))
    assert gw.listening is not None
    for _ in range(3):
        out = await asyncio.to_thread(triton_compressed, gw.listening.url)
        assert out.shape == (1, 4)
    assert sim.stats.last is not None and sim.stats.last.body[:2] == b"\x1f\x8b"
    assert attempts(gw, sim, Outcome.SUCCESS) == 3


# --- 2. errors in the route's protocol ------------------------------------------------------


def triton_error(base_url: str, model: str) -> Exception:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    try:
        inp = triton.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32), binary_data=False)
        try:
            client.infer(model, [inp])
        except InferenceServerException as e:
            return e
        raise AssertionError("the infer should have failed")
    finally:
        client.close()


async def test_tritonclient_raises_its_own_error_for_gateway_errors(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(kserve(sim, timeout="300ms"))
    assert gw.listening is not None
    err = await asyncio.to_thread(triton_error, gw.listening.url, "unrouted")
    assert "no route matches" in str(err.message())
    sim.faults = sim.faults.replace(hang_rate=1.0)
    err = await asyncio.to_thread(triton_error, gw.listening.url, "classifier")
    assert "no answer in time" in str(err.message())


OPENAI = """
version: 1
{auth}
backends:
  llm:
    protocol: openai
    endpoints: [{{url: "{a}"}}]
routes:
  - name: chat
    match: {{path: /v1/chat/completions}}
    split: [{{backend: llm, weight: 100}}]
    timeout: 2s
    {extra}
"""


async def test_openai_sdk_raises_the_matching_exception_class(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    import openai

    sim = await sims(models=["classifier"])
    gw = await gateway(
        OPENAI.format(a=sim.url, auth="", extra="rate_limit: {key: client_ip, rate: 1/h, burst: 1}")
    )
    assert gw.listening is not None
    client = openai.AsyncOpenAI(base_url=f"{gw.listening.url}/v1", api_key="unused", max_retries=0)
    try:
        messages = [{"role": "user", "content": "hi"}]
        ok = await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert ok.choices
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert limited.value.type == "rate_limit_error"
        assert limited.value.code == "rate_limited"
        assert limited.value.request_id  # the gateway's x-request-id
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="m", prompt="hi")
    finally:
        await client.close()

    dead = await gateway(OPENAI.format(a=sim.url, auth="", extra=""))
    await sim.die()
    assert dead.listening is not None
    client = openai.AsyncOpenAI(
        base_url=f"{dead.listening.url}/v1", api_key="unused", max_retries=0
    )
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )  # type: ignore[list-item]
        assert failed.value.status_code == 502
        assert failed.value.type == "server_error"
    finally:
        await client.close()


async def test_openai_sdk_authentication_error(sims: SimFactory, gateway: GatewayFactory) -> None:
    import openai

    sim = await sims(models=["classifier"])
    auth = "auth: {keys: [{id: k1, tenant: acme, hash: 'sha256:" + "0" * 64 + "'}]}"
    gw = await gateway(OPENAI.format(a=sim.url, auth=auth, extra=""))
    assert gw.listening is not None
    client = openai.AsyncOpenAI(base_url=f"{gw.listening.url}/v1", api_key="wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )  # type: ignore[list-item]
        assert refused.value.type == "authentication_error"
    finally:
        await client.close()
    assert sim.stats.total == 0


# --- 3. the path that matched is the path forwarded ---------------------------------------


TWO_ROUTES = """
version: 1
backends:
  public: {{protocol: kserve-v2, endpoints: [{{url: "{a}"}}]}}
  private: {{protocol: kserve-v2, endpoints: [{{url: "{b}"}}]}}
routes:
  - name: public
    match: {{path_prefix: /v2/models/public/}}
    split: [{{backend: public, weight: 100}}]
  - name: private
    match: {{path_prefix: /v2/models/private/}}
    split: [{{backend: private, weight: 100}}]
"""


@pytest.mark.parametrize(
    "target",
    [
        "/v2/models/public/../private/infer",
        "/v2/models/public/%2e%2e/private/infer",
        "/v2/models/./public/../private/./infer",
    ],
)
async def test_dot_segments_are_removed_before_matching_and_forwarding(
    sims: SimFactory, gateway: GatewayFactory, target: str
) -> None:
    a = await sims(models=["public", "private"])
    b = await sims(models=["public", "private"])
    gw = await gateway(TWO_ROUTES.format(a=a.url, b=b.url))
    body = json.dumps(INFER_BODY).encode()
    answer = await raw_request(
        gw,
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    assert status_of(answer) == 200
    assert b"x-tailguard-route: private" in answer.lower()
    assert a.stats.total == 0
    assert b.stats.last is not None and b.stats.last.target == "/v2/models/private/infer"


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://other.example/v2/models/public/ready HTTP/1.1",
        b"GET /v2/models/public%2F..%2Fprivate/ready HTTP/1.1",
        b"GET /v2/models/public/%00/ready HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
    ],
)
async def test_targets_that_cannot_be_normalised_safely_get_400(
    sims: SimFactory, gateway: GatewayFactory, request_line: bytes
) -> None:
    a = await sims(models=["public"])
    b = await sims(models=["private"])
    gw = await gateway(TWO_ROUTES.format(a=a.url, b=b.url))
    answer = await raw_request(gw, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 400
    assert a.stats.total == b.stats.total == 0


# --- 4. every route of a policy with auth is authorized --------------------------------------


async def test_anonymous_callers_need_an_explicit_entry_on_every_route(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    import hashlib

    sim = await sims(models=["classifier"])
    key = "k" * 40
    digest = hashlib.sha256(key.encode()).hexdigest()
    gw = await gateway(
        f"""
version: 1
auth: {{allow_anonymous: true, keys: [{{id: k1, tenant: acme, hash: "sha256:{digest}"}}]}}
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{sim.url}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
  - name: open
    match: {{model: open}}
    split: [{{backend: clf, weight: 100}}]
    allow_tenants: [anonymous]
"""
    )
    async with http.post(infer_url(gw), json=INFER_BODY) as r:
        assert r.status == 403
        assert r.headers["x-tailguard-error"] == "forbidden"
    assert sim.stats.total == 0
    async with http.post(infer_url(gw), json=INFER_BODY, headers={"x-api-key": key}) as r:
        assert r.status == 200
    async with http.post(infer_url(gw, "open"), json=INFER_BODY) as r:
        assert r.status != 403


# --- 5. bytes that crash ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Note: \xff\xfe\r\n",
        b"X-Request-Id: \xc3\x28\r\n",
        b"Inference-Header-Content-Length: \xc2\xb2\r\n",
        b"X-Tailguard-Priority: \xe2\x82\r\n",
    ],
)
async def test_header_bytes_are_a_4xx_never_a_500(
    sims: SimFactory, gateway: GatewayFactory, extra: bytes
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(kserve(sim))
    body = json.dumps(INFER_BODY).encode()
    answer = await raw_request(
        gw,
        b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    assert status_of(answer) < 500
    assert gw.metrics.errors.labels("", "internal_error")._value.get() == 0
    assert gw.metrics.errors.labels("classify", "internal_error")._value.get() == 0


async def test_lone_surrogates_in_json_never_give_a_500(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(kserve(sim) + "    cache: {ttl: 10s}\n" + "    fallback: [{cache: true}]\n")
    body = b'{"id": "\\ud800", "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
    for _ in range(2):
        async with http.post(
            infer_url(gw), data=body, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status < 500, await r.text()


# --- 6. a request's life has one end ---------------------------------------------------------


STREAMING = """
version: 1
backends:
  llm: {{protocol: openai, endpoints: [{{url: "{a}"}}]}}
routes:
  - name: chat
    match: {{path: /v1/chat/completions}}
    split: [{{backend: llm, weight: 100}}]
    timeout: 10s
    admission: {{max_concurrency: 1, queue: 0}}
"""

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}


async def test_a_stream_holds_its_admission_slot_until_its_last_byte(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    sim.faults = sim.faults.replace(stream_delay_ms=150.0)
    gw = await gateway(STREAMING.format(a=sim.url))
    assert gw.listening is not None
    url = f"{gw.listening.url}/v1/chat/completions"
    started = asyncio.Event()

    async def stream() -> int:
        async with http.post(url, json=CHAT) as r:
            if r.status == 200:
                started.set()
            await r.read()
            return r.status

    first = asyncio.ensure_future(stream())
    await asyncio.wait_for(started.wait(), 10)
    # the first stream's headers are long gone; its slot is not
    others = await asyncio.gather(*(stream() for _ in range(3)))
    assert await first == 200
    assert others == [503, 503, 503]
    assert gw.metrics.in_flight.value == 0
    # after it ended, the slot is free again
    assert await stream() == 200


async def test_a_stream_that_breaks_is_reported_once_when_it_ends(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    sim.faults = sim.faults.replace(stream_delay_ms=20.0, truncate_rate=1.0)
    gw = await gateway(STREAMING.format(a=sim.url))
    assert gw.listening is not None
    async with http.post(f"{gw.listening.url}/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200
        text = (await r.read()).decode()
    assert "event: error" in text
    m = gw.metrics
    assert m.errors.labels("chat", "stream_aborted")._value.get() == 1
    counted = sum(m.attempts.labels("llm", sim.url, o.value)._value.get() for o in Outcome)
    assert counted == 1
    assert m.attempts.labels("llm", sim.url, "success")._value.get() == 0


async def test_a_client_that_leaves_cancels_its_attempts(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(kserve(sim, timeout="20s"))
    sim.faults = sim.faults.replace(hang_rate=1.0)
    with pytest.raises(TimeoutError):
        async with http.post(
            infer_url(gw), json=INFER_BODY, timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    # the backend is let go long before the route's 20 s deadline
    for _ in range(500):
        if not sim.stats.in_flight:
            break
        await asyncio.sleep(0.02)
    assert sim.stats.in_flight == 0
    assert attempts(gw, sim, Outcome.CANCELLED) == 1
    assert gw.metrics.errors.labels("classify", "client_closed")._value.get() == 1


async def test_body_read_errors_are_counted_like_every_answer(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(
        kserve(sim).replace("version: 1\n", "version: 1\ngateway: {max_body: 1KiB}\n")
    )
    async with http.post(infer_url(gw), data=b"x" * 4096) as r:
        assert r.status == 413
    m = gw.metrics
    assert m.errors.labels("classify", "body_too_large")._value.get() == 1
    assert m.requests.labels("classify", "clf", "4xx", "http")._value.get() == 1  # type: ignore[attr-defined]


# --- 7. slow clients hold no slot for long ------------------------------------------------


LIMITED = """
version: 1
gateway: {{header_timeout: 300ms, idle_timeout: 400ms, max_connections: 3, max_header_size: 2KiB}}
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{a}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
"""


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 4")


async def test_slowloris_head_is_cut_off(sims: SimFactory, gateway: GatewayFactory) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(LIMITED.format(a=sim.url))
    assert gw.listening is not None
    for host, port in ((gw.listening.host, gw.listening.port),
                       (gw.listening.admin_host, gw.listening.admin_port)):  # fmt: skip
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /v2/models/classifier/ready HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        # ten times the header timeout is ample; without a limit this waits forever
        assert await _closed_within(reader, 3.0)
        writer.close()


async def test_idle_keepalive_connections_are_closed(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(LIMITED.format(a=sim.url))
    assert gw.listening is not None
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    writer.write(b"GET /v2/models/classifier/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    # half a second of silence later, a byte that was never a request head
    writer.write(b"G")
    await writer.drain()
    assert await _closed_within(reader, 4.0)
    writer.close()


async def test_connections_beyond_the_cap_are_closed(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(
        LIMITED.replace("header_timeout: 300ms", "header_timeout: 5s").format(a=sim.url)
    )
    assert gw.listening is not None
    held = [await asyncio.open_connection(gw.listening.host, gw.listening.port) for _ in range(3)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection(gw.listening.host, gw.listening.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # the connections within the cap still serve
    r, w = held[0]
    w.write(b"GET /v2/models/classifier/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    await w.drain()
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()


async def test_oversized_headers_are_refused(sims: SimFactory, gateway: GatewayFactory) -> None:
    sim = await sims(models=["classifier"])
    gw = await gateway(LIMITED.format(a=sim.url))
    answer = await raw_request(
        gw,
        b"GET /v2/models/classifier/ready HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * 3000
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status_of(answer) in (400, 431)
    assert sim.stats.total == 0


# --- 8. what may be sent twice ------------------------------------------------------------


HEDGED = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}]
    locality: {{panic_threshold: 0%}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    hedging: {{delay: 10ms, budget: 100%}}
    {idempotent}
"""


@pytest.mark.parametrize(("idempotent", "hedges"), [("", False), ("idempotent: true", True)])
async def test_hedges_follow_the_rule_retries_follow(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession,
    idempotent: str, hedges: bool,
) -> None:  # fmt: skip
    slow = Faults(latency=Latency(kind="fixed", ms=150))
    a = await sims(models=["classifier"], faults=slow)
    b = await sims(models=["classifier"], faults=slow)
    gw = await gateway(HEDGED.format(a=a.url, b=b.url, idempotent=idempotent))
    n = 10
    for _ in range(n):
        async with http.post(infer_url(gw), json=INFER_BODY) as r:
            assert r.status == 200
    sent = a.stats.total + b.stats.total
    if hedges:
        assert sent > n
    else:
        assert sent == n
        assert gw.metrics.hedges_sent.labels("classify")._value.get() == 0


# --- 9. one deposit per client request ------------------------------------------------------


async def test_a_fallback_backend_does_not_deposit_twice(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(models=["classifier"])
    b = await sims(models=["classifier"])
    gw = await gateway(
        f"""
version: 1
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{a.url}"}}]}}
  small: {{protocol: kserve-v2, endpoints: [{{url: "{b.url}"}}]}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    timeout: 2s
    retries: {{attempts: 2, on: [5xx], budget: 50%, min_retries: 0}}
    fallback: [{{backend: small, timeout: 500ms}}]
"""
    )
    await a.die()
    budget = gw.snapshot.routes[0].retry_budget
    assert budget is not None
    n = 8
    for _ in range(n):
        async with http.post(infer_url(gw), json=INFER_BODY) as r:
            assert r.status == 200
            assert r.headers["x-tailguard-fallback"] == "backend"
    # 8 client requests at 50 % earn 4 retries, whatever the fallback ran (a single endpoint
    # leaves nothing to retry on, so nothing was spent)
    assert budget.balance == pytest.approx(n * 0.5)
