"""Auth over real sockets: refused callers get 401/403 and nothing of theirs reaches a backend."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest

from gateway.app import Gateway
from gateway.auth import hash_key
from gateway.sim import SimServer
from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

ACME_KEY = "acme-key-0123456789abcdef"
GLOBEX_KEY = "globex-key-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
JWT_SECRET = "jwt-secret-that-is-at-least-32-bytes-long!"

POLICY = """\
version: 1
auth:
  keys:
    - {{id: acme-app, tenant: acme, hash: "{acme}"}}
    - {{id: globex-app, tenant: globex, hash: "{globex}"}}
  jwt: {{algorithms: [HS256], secret_env: TEST_TAILGUARD_JWT, audience: tailguard,
         tenant_claim: org}}
admin:
  tokens: [{{id: ops, hash: "{admin}"}}]
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}"}}]
routes:
  - name: acme-only
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
    allow_tenants: [acme]
  - name: everyone
    match: {{path_prefix: /v2/models/}}
    split: [{{backend: clf, weight: 100}}]
"""


@pytest.fixture
async def secured(
    sims: SimFactory, gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[Gateway, SimServer]:
    monkeypatch.setenv("TEST_TAILGUARD_JWT", JWT_SECRET)
    monkeypatch.delenv("TAILGUARD_ADMIN_TOKEN", raising=False)
    a = await sims(name="a", models=["classifier", "other"])
    gw = await gateway(
        POLICY.format(
            a=a.url,
            acme=hash_key(ACME_KEY),
            globex=hash_key(GLOBEX_KEY),
            admin=hash_key(ADMIN_TOKEN),
        )
    )
    return gw, a


def token(
    org: str, *, exp_in: float = 300, secret: str = JWT_SECRET, aud: str = "tailguard"
) -> str:
    now = time.time()
    claims = {"sub": f"user-of-{org}", "org": org, "aud": aud, "exp": now + exp_in, "iat": now}
    return jwt.encode(claims, secret, algorithm="HS256")


async def post(
    http: aiohttp.ClientSession, gw: Gateway, model: str, headers: dict[str, str]
) -> tuple[int, dict[str, object], aiohttp.typedefs.LooseHeaders]:
    assert gw.listening is not None
    url = f"{gw.listening.url}/v2/models/{model}/infer"
    async with http.post(url, json=INFER_BODY, headers=headers) as r:
        return r.status, await r.json(), r.headers


REFUSED_401 = [
    {},
    {"x-api-key": "not-a-key"},
    {"x-api-key": ""},
    {"authorization": f"Basic {ACME_KEY}"},
    {"authorization": "Bearer not-a-key"},
    {"authorization": f"Bearer {token('acme', exp_in=-3600)}"},  # expired
    {"authorization": f"Bearer {token('acme', secret='another-secret-of-32-bytes-or-more!!')}"},
    {"authorization": f"Bearer {token('acme', aud='someone-else')}"},
    {"x-api-key": ADMIN_TOKEN},  # the admin token is no client credential
]


async def test_requests_without_valid_credentials_never_reach_a_backend(
    secured: tuple[Gateway, SimServer], http: aiohttp.ClientSession
) -> None:
    gw, a = secured
    for headers in REFUSED_401:
        for model in ("classifier", "other", "unknown"):
            status, body, resp_headers = await post(http, gw, model, headers)
            assert status == 401, (headers, model, body)
            assert resp_headers["x-tailguard-error"] == "unauthorized"  # type: ignore[index]
            assert isinstance(body["error"], str)
            assert "Bearer" in resp_headers["WWW-Authenticate"]  # type: ignore[index]
            # the credential itself is never echoed back
            for value in headers.values():
                if len(value) > 12:
                    assert value not in str(body)
    # a tenant the route does not list: 403
    for headers in (
        {"x-api-key": GLOBEX_KEY},
        {"authorization": f"Bearer {GLOBEX_KEY}"},
        {"authorization": f"Bearer {token('globex')}"},
    ):
        status, body, _ = await post(http, gw, "classifier", headers)
        assert status == 403, (headers, body)
        assert "globex" in str(body)
    assert a.stats.total == 0  # no health checks here: nothing at all reached it

    # valid credentials pass, each to what its tenant may use
    for headers in (
        {"x-api-key": ACME_KEY},
        {"authorization": f"Bearer {ACME_KEY}"},
        {"authorization": f"Bearer {token('acme')}"},
    ):
        status, body, _ = await post(http, gw, "classifier", headers)
        assert status == 200, (headers, body)
    status, _, _ = await post(http, gw, "other", {"x-api-key": GLOBEX_KEY})
    assert status == 200
    assert a.stats.by_kind["infer"] == 4

    failures = gw.metrics.auth_failures
    assert failures.labels("", "unauthorized")._value.get() == 3 * len(REFUSED_401)
    assert failures.labels("acme-only", "forbidden")._value.get() == 3


async def test_the_admin_api_refuses_data_plane_keys(
    secured: tuple[Gateway, SimServer], http: aiohttp.ClientSession
) -> None:
    gw, _ = secured
    assert gw.listening is not None
    base = gw.listening.admin_url
    for headers in (
        {"x-api-key": ACME_KEY},
        {"authorization": f"Bearer {ACME_KEY}"},
        {"x-admin-token": GLOBEX_KEY},
        {"authorization": f"Bearer {token('acme')}"},
    ):
        async with http.get(f"{base}/admin/status", headers=headers) as r:
            assert r.status == 401, headers
        async with http.post(f"{base}/admin/reload", headers=headers) as r:
            assert r.status == 401, headers
    async with http.get(
        f"{base}/admin/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as r:
        assert r.status == 200
        text = await r.text()
    # the status names keys by id at most; secrets and hashes stay out of it
    for secret in (ACME_KEY, GLOBEX_KEY, ADMIN_TOKEN, JWT_SECRET, hash_key(ACME_KEY)):
        assert secret not in text
