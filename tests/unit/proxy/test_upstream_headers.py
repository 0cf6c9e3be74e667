"""What an attempt sends upstream: the client's headers, minus what only the gateway states."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.attempts import upstream_headers
from gateway.proxy.exchange import ProxyRequest


def request(*headers: tuple[str, str]) -> ProxyRequest:
    return ProxyRequest(
        method="POST",
        path="/v2/models/m/infer",
        path_qs="/v2/models/m/infer",
        headers=CIMultiDictProxy(CIMultiDict(headers)),
        body=b"{}",
        request_id="gw-1",
        client_ip="10.0.0.9",
        scheme="http",
        received_at=0.0,
    )


def test_forwarding_facts_are_the_gateways_whatever_case_the_client_used() -> None:
    out = upstream_headers(
        request(
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "client-chosen"),
            ("Host", "evil"),
            ("content-length", "999"),
        )
    )
    assert out.getall("X-Forwarded-For") == ["6.6.6.6, 10.0.0.9"]
    assert out.getall("X-Forwarded-Proto") == ["http"]
    assert out.getall("X-Request-Id") == ["gw-1"]
    assert "Host" not in out and "Content-Length" not in out


def test_repeated_headers_all_go_through_and_hop_by_hop_ones_do_not() -> None:
    out = upstream_headers(
        request(
            ("Accept", "a"),
            ("Accept", "b"),
            ("Connection", "keep-alive, x-private"),
            ("X-Private", "secret-hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        )
    )
    assert out.getall("Accept") == ["a", "b"]
    assert "X-Private" not in out and "Keep-Alive" not in out and "Connection" not in out
    assert out.getall("X-Forwarded-For") == ["1.1.1.1, 2.2.2.2, 10.0.0.9"]


def test_the_gateways_own_credentials_are_stripped() -> None:
    out = upstream_headers(
        request(("X-Api-Key", "k"), ("Authorization", "Bearer t"), ("X-Tenant", "acme")),
        frozenset({"x-api-key", "authorization"}),
    )
    assert "X-Api-Key" not in out and "Authorization" not in out
    assert out["X-Tenant"] == "acme"
