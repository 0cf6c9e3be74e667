"""The admin API over real sockets: its own credentials, drain, breaker reset, the audit trail."""

from __future__ import annotations

import asyncio
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
