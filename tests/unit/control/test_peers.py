"""What a replica does with its peers' endpoint news: act on real news, ignore the rest."""

from __future__ import annotations

import json

import pytest

from gateway.app import compile_text
from gateway.clock import FakeClock
from gateway.control.peers import PeerNotifier
from gateway.state.memory import MemoryStore
from gateway.telemetry.catalog import Metrics

POLICY = """\
version: 1
state: {share_ejections: true, suspect_for: 10s}
backends:
  b: {protocol: http, endpoints: [{url: "http://127.0.0.1:9"}]}
routes:
  - {name: r, match: {path_prefix: /}, split: [{backend: b, weight: 100}]}
"""


@pytest.fixture
def setup() -> tuple[PeerNotifier, Metrics, FakeClock]:
    snapshot = compile_text(POLICY, "p.yaml")
    clock = FakeClock()
    metrics = Metrics()
    peers = PeerNotifier(MemoryStore(clock), lambda: snapshot, metrics, clock, replica="me")
    peers.snapshot = snapshot  # type: ignore[attr-defined]
    return peers, metrics, clock


def series(metrics: Metrics) -> list[tuple[str, ...]]:
    return [
        tuple(s.labels.values())
        for fam in metrics.peer_events.collect()
        for s in fam.samples
        if s.name.endswith("_total")
    ]


def message(**kw: object) -> bytes:
    base: dict[str, object] = {
        "replica": "peer",
        "backend": "b",
        "endpoint": "",
        "event": "ejected",
    }
    base.update(kw)
    return json.dumps(base).encode()


def test_a_peer_ejection_makes_the_endpoint_suspect(
    setup: tuple[PeerNotifier, Metrics, FakeClock],
) -> None:
    peers, metrics, clock = setup
    state = peers.snapshot.backends["b"].states[0]  # type: ignore[attr-defined]
    peers.receive(message(endpoint=state.spec.id))
    assert state.suspect_until == pytest.approx(clock.now() + 10.0)
    assert sorted(series(metrics)) == [("b", "ejected", "detected"), ("b", "ejected", "enforced")]


def test_own_messages_are_ignored(setup: tuple[PeerNotifier, Metrics, FakeClock]) -> None:
    peers, metrics, _ = setup
    state = peers.snapshot.backends["b"].states[0]  # type: ignore[attr-defined]
    before = state.suspect_until
    peers.receive(message(replica="me", endpoint=state.spec.id))
    assert state.suspect_until == before and series(metrics) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        b"[]",
        b"null",
        b'"text"',
        b'{"replica": "peer"}',
        b"[" * 100_000,
        message(backend="no-such-backend"),
        message(event="x" * 200),
    ],
)
def test_malformed_or_foreign_messages_are_ignored_without_new_metric_series(
    setup: tuple[PeerNotifier, Metrics, FakeClock], raw: bytes
) -> None:
    peers, metrics, _ = setup
    peers.receive(raw)
    assert series(metrics) == []
