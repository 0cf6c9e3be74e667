"""`gateway.grpc` and the shared listener limits, resolved into `GrpcLimits` at compile time."""

from __future__ import annotations

import pytest

from gateway.app import compile_text
from gateway.errors import PolicyError
from gateway.policy.compile import GrpcLimits
from gateway.policy.model import (
    GRPC_MAX_CONCURRENT_STREAMS,
    GRPC_MAX_PING_STRIKES,
    GRPC_MIN_PING_INTERVAL,
)

POLICY = """version: 1
gateway:
{gateway}
backends:
  a: {{protocol: kserve-v2, endpoints: [{{grpc: 10.0.0.1:8001}}]}}
routes:
  - {{name: r, match: {{model: m}}, split: [{{backend: a, weight: 100}}]}}
"""


def limits(gateway: str) -> GrpcLimits:
    return compile_text(POLICY.format(gateway=gateway), "p.yaml").settings.grpc


def test_defaults_are_tied_to_the_shared_limits() -> None:
    g = limits("  max_body: 1MiB\n  max_header_size: 8KiB\n  idle_timeout: 90s\n")
    assert g.max_receive_message == g.max_send_message == 1 << 20
    assert g.max_metadata_size == 8 * 1024
    assert g.max_connection_idle == 90.0
    assert g.max_concurrent_streams == GRPC_MAX_CONCURRENT_STREAMS
    assert g.min_ping_interval == GRPC_MIN_PING_INTERVAL
    assert g.max_ping_strikes == GRPC_MAX_PING_STRIKES
    assert not g.permit_keepalive_without_calls
    assert limits("  max_connections: 7\n  header_timeout: 3s\n").max_connections == 7


def test_the_grpc_block_overrides() -> None:
    g = limits(
        "  grpc: {max_send_message: 64MiB, max_connection_idle: 5m, max_connection_age: null,\n"
        "         permit_keepalive_without_calls: true, max_ping_strikes: 0}\n"
    )
    assert g.max_send_message == 64 << 20 and g.max_receive_message == 4 << 20
    assert g.max_connection_idle == 300.0
    assert g.max_connection_age is None
    assert g.permit_keepalive_without_calls and g.max_ping_strikes == 0


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("grpc: {max_concurrent_streams: 0}", "gateway.grpc.max_concurrent_streams"),
        ("grpc: {keepalive_time: 30d}", "gateway.grpc"),
        ("grpc: {min_ping_interval: 10}", "gateway.grpc.min_ping_interval"),
        ("grpc: {max_pings: 2}", "gateway.grpc"),
    ],
)
def test_bad_settings_name_the_field_and_line(setting: str, field: str) -> None:
    with pytest.raises(PolicyError) as e:
        limits(f"  {setting}\n")
    text = str(e.value)
    assert "p.yaml:3" in text and field in text
