"""The admin API over real sockets: its own credentials, drain, breaker reset, the audit trail."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.auth import hash_key
from gateway.sim.faults import Faults
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

ADMIN_TOKEN = "admin-token-0123456789"
CLIENT_KEY = "client-key-0123456789"

SECURED = """\
version: 1
auth:
  keys: [{{id: app, tenant: acme, hash: "{client}"}}]
admin:
  tokens: [{{id: ops, hash: "{admin}"}}]
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
"""

TWO_ENDPOINTS = """\
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}, {{url: "{b}"}}]
    circuit_breaker: {{window_calls: 10, minimum_calls: 4, failure_rate: 50%, open_for: 1m}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    retries: {{attempts: 2, non_idempotent: true, backoff: {{base: 1ms, max: 2ms}}}}
"""

ONE_ENDPOINT = """\
version: 1
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{a}"}}]}}
routes:
  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}
"""


def admin_url(gw: Gateway) -> str:
    assert gw.listening is not None
    return gw.listening.admin_url


def data_url(gw: Gateway) -> str:
    assert gw.listening is not None
    return f"{gw.listening.url}/v2/models/classifier/infer"


async def fire(http: aiohttp.ClientSession, gw: Gateway, n: int) -> list[int]:
    async def one() -> int:
        async with http.post(data_url(gw), json=INFER_BODY) as r:
            await r.read()
            return r.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


Audited = tuple[Callable[[str], Awaitable[Gateway]], Path]


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[Audited]:
    """A gateway factory is not enough here: this one writes an audit log."""
    holder: list[Gateway] = []
    log = tmp_path / "audit.jsonl"

    async def make(policy: str) -> Gateway:
        path = tmp_path / "policy.yaml"
        path.write_text(policy)
        gw = Gateway(path, listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0), audit_log=log)
        await gw.start()
        holder.append(gw)
        return gw

    yield make, log
    for gw in holder:
        await gw.stop()


async def test_admin_api_has_its_own_credentials(
    sims: SimFactory,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    a = await sims(name="a")
    gw = await gateway(
        SECURED.format(a=a.url, client=hash_key(CLIENT_KEY), admin=hash_key(ADMIN_TOKEN))
    )
    base = admin_url(gw)

    async def status(headers: dict[str, str]) -> int:
        async with http.get(f"{base}/admin/status", headers=headers) as r:
            await r.read()
            return r.status

    assert await status({}) == 401
    assert await status({"authorization": "Bearer wrong"}) == 401
    # the data plane's key opens nothing here, however it is presented
    assert await status({"authorization": f"Bearer {CLIENT_KEY}"}) == 401
    assert await status({"x-admin-token": CLIENT_KEY}) == 401
    assert await status({"x-api-key": CLIENT_KEY}) == 401
    assert await status({"authorization": f"Bearer {ADMIN_TOKEN}"}) == 200
    assert await status({"x-admin-token": ADMIN_TOKEN}) == 200
    # and the admin token is no client credential either
    async with http.post(data_url(gw), json=INFER_BODY, headers={"x-api-key": ADMIN_TOKEN}) as r:
        assert r.status == 401
    async with http.post(data_url(gw), json=INFER_BODY, headers={"x-api-key": CLIENT_KEY}) as r:
        assert r.status == 200

    # mutating actions are refused the same way, and change nothing
    sha = gw.snapshot.sha256
    async with http.post(
        f"{base}/admin/policy", data="version: 1\n", headers={"x-admin-token": CLIENT_KEY}
    ) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    assert gw.snapshot.sha256 == sha
    async with http.post(
        f"{base}/admin/endpoints/drain",
        json={"backend": "clf", "endpoint": a.url},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    ) as r:
        assert r.status == 401
    assert not gw.snapshot.backends["clf"].states[0].admin_drain

    # what scrapers and orchestrators need stays open
    for path in ("/metrics", "/healthz", "/readyz"):
        async with http.get(f"{base}{path}") as r:
            assert r.status == 200, path


async def test_environment_token_and_loopback_default(
    sims: SimFactory,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    gw = await gateway(TWO_ENDPOINTS.format(a=a.url, b=b.url))
    base = admin_url(gw)
    # no credentials configured: loopback callers only (this test is one)
    async with http.get(f"{base}/admin/status") as r:
        assert r.status == 200
    # a presented token must be right even then
    async with http.get(f"{base}/admin/status", headers={"x-admin-token": "guess"}) as r:
        assert r.status == 401

    # the environment is read when the admin API starts
    monkeypatch.setenv("TAILGUARD_ADMIN_TOKEN", "from-the-environment")
    base = admin_url(await gateway(TWO_ENDPOINTS.format(a=a.url, b=b.url)))
    async with http.get(f"{base}/admin/status") as r:
        assert r.status == 401
    async with http.get(
        f"{base}/admin/status", headers={"authorization": "Bearer from-the-environment"}
    ) as r:
        assert r.status == 200


async def test_drain_moves_traffic_off_an_endpoint_without_failures(
    sims: SimFactory, audited: Audited, http: aiohttp.ClientSession
) -> None:
    make, log = audited
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await make(TWO_ENDPOINTS.format(a=a.url, b=b.url))
    base = admin_url(gw)
    assert (await fire(http, gw, 40)).count(200) == 40
    assert a.stats.total > 0 and b.stats.total > 0

    async with http.post(
        f"{base}/admin/endpoints/drain", json={"backend": "clf", "endpoint": a.url}
    ) as r:
        assert r.status == 200
        assert await r.json() == {"backend": "clf", "endpoint": a.url, "draining": True}
    served_a = a.stats.by_kind["infer"]
    assert (await fire(http, gw, 60)).count(200) == 60
    assert a.stats.by_kind["infer"] == served_a
    async with http.get(f"{base}/admin/status") as r:
        endpoints = (await r.json())["backends"][0]["endpoints"]
    assert [e["draining"] for e in endpoints] == [True, False]

    # a reload that keeps the endpoint keeps it drained
    async with http.post(f"{base}/admin/reload") as r:
        assert r.status == 200
    assert (await fire(http, gw, 20)).count(200) == 20
    assert a.stats.by_kind["infer"] == served_a

    async with http.post(
        f"{base}/admin/endpoints/undrain", json={"backend": "clf", "endpoint": a.url}
    ) as r:
        assert r.status == 200
    assert (await fire(http, gw, 60)).count(200) == 60
    assert a.stats.by_kind["infer"] > served_a

    async with http.post(
        f"{base}/admin/endpoints/drain", json={"backend": "clf", "endpoint": "http://nowhere:1"}
    ) as r:
        assert r.status == 404
        assert "nowhere" in (await r.json())["error"]["message"]
    async with http.post(f"{base}/admin/endpoints/drain", json={"endpoint": a.url}) as r:
        assert r.status == 400
    async with http.post(f"{base}/admin/endpoints/drain", data=b"not json") as r:
        assert r.status == 400

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    events = [(e["event"], e["actor"]) for e in entries if e["event"].startswith("endpoint-")]
    assert events == [("endpoint-drain", "loopback"), ("endpoint-undrain", "loopback")]


async def test_breaker_reset_closes_an_open_breaker(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(TWO_ENDPOINTS.format(a=a.url, b=b.url))
    base = admin_url(gw)
    a.faults = Faults(error_rate=1.0)
    await fire(http, gw, 30)  # some fail: the retry budget bounds how many go on to b

    async def breakers() -> list[str]:
        async with http.get(f"{base}/admin/status") as r:
            return [e["breaker"] for e in (await r.json())["backends"][0]["endpoints"]]

    assert await breakers() == ["open", "closed"]
    a.faults = Faults()
    async with http.post(
        f"{base}/admin/breakers/reset", json={"backend": "clf", "endpoint": a.url}
    ) as r:
        assert r.status == 200
        assert (await r.json())["breaker"] == "closed"
    assert await breakers() == ["closed", "closed"]
    served = a.stats.by_kind["infer"]
    assert (await fire(http, gw, 20)).count(200) == 20
    assert a.stats.by_kind["infer"] > served

    async with http.post(
        f"{base}/admin/breakers/reset", json={"backend": "nope", "endpoint": a.url}
    ) as r:
        assert r.status == 404


async def test_canary_actions_need_a_canary(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    b = await sims(name="b")
    gw = await gateway(TWO_ENDPOINTS.format(a=a.url, b=b.url))
    async with http.post(f"{admin_url(gw)}/admin/canary/classify/promote") as r:
        assert r.status == 404
        assert "has no canary" in (await r.json())["error"]["message"]
    async with http.post(f"{admin_url(gw)}/admin/canary/classify/explode") as r:
        assert r.status in (404, 405)


async def raw_exchange(
    base: str, head: bytes, *, body: bytes = b"", until: bytes = b"\r\n\r\n"
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send `head` (and `body`) as they are, and read up to the end of the answer's head."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(until), 30)
    return answer, reader, writer


def secured_policy(a: str) -> str:
    return SECURED.format(a=a, client=hash_key(CLIENT_KEY), admin=hash_key(ADMIN_TOKEN))


@pytest.mark.parametrize("secured", [True, False], ids=["tokens", "loopback-only"])
async def test_token_bytes_that_are_not_ascii_get_401_not_500(
    sims: SimFactory,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    secured: bool,
) -> None:
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    a = await sims(name="a")
    gw = await gateway(secured_policy(a.url) if secured else ONE_ENDPOINT.format(a=a.url))
    base = admin_url(gw)
    token = ADMIN_TOKEN.encode()
    for header in (
        b"x-admin-token: \xff\xfe\xfd",
        b"x-admin-token: " + token[:-1] + b"\xe9",  # latin-1, not UTF-8
        b"x-admin-token: " + token[:-1] + "é".encode(),  # UTF-8, not ASCII
        b"authorization: Bearer \xc3\x28" + token,
        b"authorization: Bearer " + token + b"\x80",
    ):
        for method, path in ((b"GET", b"/admin/status"), (b"POST", b"/admin/policy")):
            head = method + b" " + path + b" HTTP/1.1\r\nhost: x\r\n" + header
            answer, _, writer = await raw_exchange(base, head + b"\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            assert answer.startswith(b"HTTP/1.1 401 "), (header, answer)
    # the listener is unharmed, and a good token still opens it
    async with http.get(f"{base}/admin/status", headers={"x-admin-token": ADMIN_TOKEN}) as r:
        assert r.status == (200 if secured else 401)


async def test_a_refused_caller_gets_401_before_sending_its_body(
    sims: SimFactory, gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    a = await sims(name="a")
    gw = await gateway(secured_policy(a.url))
    base = admin_url(gw)
    sha = gw.snapshot.sha256
    size = str(4 << 20).encode()

    def head(token: str, *extra: bytes) -> bytes:
        lines = [b"POST /admin/policy HTTP/1.1", b"host: x", b"x-admin-token: " + token.encode()]
        lines += [b"content-type: text/yaml", b"content-length: " + size, *extra]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # 4 MiB announced, not one byte sent: the answer comes from the headers alone
    answer, reader, writer = await raw_exchange(base, head("wrong"))
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"connection: close" in answer.lower()
    assert b"www-authenticate: bearer" in answer.lower()
    writer.close()
    # a client that waits for "100 Continue" is refused instead, and never sends the body
    answer, _, writer = await raw_exchange(base, head("wrong", b"expect: 100-continue"))
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    writer.close()
    assert gw.snapshot.sha256 == sha

    # the right token is told to go on, and then the body is read and judged
    answer, reader, writer = await raw_exchange(base, head(ADMIN_TOKEN, b"expect: 100-continue"))
    assert answer == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"x" * (4 << 20))
    await writer.drain()
    rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert rest.startswith(b"HTTP/1.1 422 "), rest  # a policy, just not a valid one
    writer.close()
    assert gw.snapshot.sha256 == sha


async def test_a_policy_of_almost_4_mib_is_accepted(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    a = await sims(name="a")
    policy = ONE_ENDPOINT.format(a=a.url)
    gw = await gateway(policy)
    padded = policy + ("# " + "x" * 1000 + "\n") * 4000
    assert len(padded) > (3 << 20) and len(padded) < (4 << 20)
    url = f"{admin_url(gw)}/admin/policy/validate"
    async with http.post(url, data=io.BytesIO(padded.encode())) as r:
        assert r.status == 200, await r.text()
    async with http.post(url, data=io.BytesIO(padded.encode() * 2)) as r:
        assert r.status == 413


async def test_a_gateway_takes_no_supervisor_header_from_anyone(
    sims: SimFactory, gateway: GatewayFactory, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TAILGUARD_SUPERVISOR_SECRET", raising=False)
    a = await sims(name="a")
    gw = await gateway(ONE_ENDPOINT.format(a=a.url))
    forged = {"x-tailguard-supervisor": "anything", "x-tailguard-admin-peer": "127.0.0.1"}
    async with http.get(f"{admin_url(gw)}/admin/status", headers=forged) as r:
        assert r.status == 401
    async with http.get(f"{admin_url(gw)}/admin/status") as r:
        assert r.status == 200  # loopback, no tokens: the caller itself is local

    # a worker (the secret in its environment) takes the supervisor's word, and only that
    monkeypatch.setenv("TAILGUARD_SUPERVISOR_SECRET", "the-secret-of-this-run")
    worker = admin_url(await gateway(ONE_ENDPOINT.format(a=a.url)))
    async with http.get(f"{worker}/admin/status") as r:
        assert r.status == 401
    async with http.get(f"{worker}/admin/status", headers=forged) as r:
        assert r.status == 401
    for peer, status in (("127.0.0.1", 200), ("198.51.100.4", 401)):
        vouched = {
            "x-tailguard-supervisor": "the-secret-of-this-run",
            "x-tailguard-admin-peer": peer,
        }
        async with http.get(f"{worker}/admin/status", headers=vouched) as r:
            assert r.status == status, peer
