"""Rate-limit keys and answers: no secret in a store key, headers on every decision."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import compile_text
from gateway.auth import AuthMethod, Identity
from gateway.clock import FakeClock
from gateway.errors import RateLimited
from gateway.policy.compile import RateLimitSpec, Snapshot
from gateway.proxy.exchange import Exchange, LocalAnswer, ProxyRequest
from gateway.proxy.pipeline import Answer
from gateway.proxy.ratelimit import ANONYMOUS, RateLimitStage, limit_key
from gateway.state.memory import MemoryStore
from gateway.telemetry.catalog import Metrics

POLICY = """\
version: 1
{auth}
backends:
  b: {{protocol: http, endpoints: [{{url: "http://127.0.0.1:9"}}]}}
routes:
  - name: r
    match: {{path_prefix: /}}
    split: [{{backend: b, weight: 100}}]
    rate_limit: {{key: {key}, header: {header}, rate: 1/s, burst: 2}}
"""

AUTH = 'auth: {api_key_header: x-tenant-key, keys: [{id: k1, tenant: t1, hash: "%s"}]}' % (
    "sha256:" + "0" * 64
)

SECRET = "sk-live-0123456789abcdef"


def snapshot(key: str = "api_key", header: str = "null", auth: str = "") -> Snapshot:
    return compile_text(POLICY.format(auth=auth, key=key, header=header), "p.yaml")


def exchange(snap: Snapshot, headers: dict[str, str], identity: Identity | None = None) -> Exchange:
    req = ProxyRequest(
        "POST", "/x", "/x", CIMultiDictProxy(CIMultiDict(headers)), b"", "rid", "10.0.0.1",
        "http", 0.0,
    )  # fmt: skip
    ex = Exchange(req, snap)
    ex.route = snap.routes[0]
    ex.identity = identity
    return ex


def spec(snap: Snapshot) -> RateLimitSpec:
    rl = snap.routes[0].rate_limit
    assert rl is not None
    return rl


def test_a_header_key_never_puts_the_raw_value_in_the_store_key() -> None:
    snap = snapshot(key="header", header="authorization")
    key = limit_key(exchange(snap, {"authorization": f"Bearer {SECRET}"}), spec(snap))
    assert SECRET not in key and len(key) == 32
    other = limit_key(exchange(snap, {"authorization": "Bearer other"}), spec(snap))
    assert other != key
    # a client's header value cannot pose as the anonymous bucket either
    assert limit_key(exchange(snap, {"authorization": "-"}), spec(snap)) != ANONYMOUS
    assert limit_key(exchange(snap, {}), spec(snap)) == ANONYMOUS


def test_api_keys_are_read_from_the_header_the_auth_section_names() -> None:
    snap = snapshot(auth=AUTH)
    a = limit_key(exchange(snap, {"x-tenant-key": "key-a"}), spec(snap))
    b = limit_key(exchange(snap, {"x-tenant-key": "key-b"}), spec(snap))
    # before: both read the absent x-api-key and shared the anonymous bucket
    assert ANONYMOUS not in (a, b) and a != b
    assert "key-a" not in a


def test_an_authenticated_caller_is_limited_by_identity_not_by_credential() -> None:
    snap = snapshot()
    who = Identity("acme", "acme-app", AuthMethod.JWT)
    one = limit_key(exchange(snap, {"authorization": "Bearer token.one.x"}, who), spec(snap))
    two = limit_key(exchange(snap, {"authorization": "Bearer token.two.y"}, who), spec(snap))
    assert one == two  # a freshly minted token does not open a fresh bucket
    plain = limit_key(exchange(snap, {"x-api-key": SECRET}), spec(snap))
    bearer = limit_key(exchange(snap, {"authorization": f"bearer  {SECRET} "}), spec(snap))
    assert plain == bearer and SECRET not in plain


async def _ok(ex: Exchange) -> Answer:
    return LocalAnswer(200, b"ok")


async def test_success_and_refusal_carry_rate_limit_headers() -> None:
    clock = FakeClock()
    memory = MemoryStore(clock)
    stage = RateLimitStage(memory, memory, Metrics(), clock)
    snap = snapshot(key="client_ip")
    seen = []
    for _ in range(2):
        ex = exchange(snap, {})
        await stage(ex, _ok)
        seen.append(ex.extra_headers)
    assert seen == [
        {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "1"},
        {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "0"},
    ]
    with pytest.raises(RateLimited) as refused:
        await stage(exchange(snap, {}), _ok)
    assert refused.value.headers == {
        "retry-after": "1",
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1",
    }
    clock.advance(1.0)
    assert isinstance(await stage(exchange(snap, {}), _ok), LocalAnswer)
