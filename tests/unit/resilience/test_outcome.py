"""Outcome classification of gRPC statuses, as Triton means them."""

from __future__ import annotations

import grpc
import pytest

from gateway.resilience.outcome import GRPC_CLIENT_CODES, Outcome, classify_grpc


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("OK", Outcome.SUCCESS),
        ("UNAVAILABLE", Outcome.STATUS_5XX),
        ("INTERNAL", Outcome.STATUS_5XX),
        ("UNKNOWN", Outcome.STATUS_5XX),
        ("DEADLINE_EXCEEDED", Outcome.TIMEOUT),
        ("RESOURCE_EXHAUSTED", Outcome.STATUS_429),
        ("INVALID_ARGUMENT", Outcome.CLIENT_ERROR),
        ("NOT_FOUND", Outcome.CLIENT_ERROR),
        ("UNIMPLEMENTED", Outcome.CLIENT_ERROR),
        ("CANCELLED", Outcome.CLIENT_ERROR),
        ("UNAUTHENTICATED", Outcome.CLIENT_ERROR),
        ("PERMISSION_DENIED", Outcome.CLIENT_ERROR),
    ],
)
def test_grpc_statuses(code: str, outcome: Outcome) -> None:
    assert classify_grpc(code) is outcome


def test_every_grpc_status_is_classified_and_only_the_clients_trip_nothing() -> None:
    for status in grpc.StatusCode:
        outcome = classify_grpc(status.name)
        assert outcome.is_failure is (status.name not in GRPC_CLIENT_CODES | {"OK"})
    assert {s.name for s in grpc.StatusCode} >= GRPC_CLIENT_CODES
