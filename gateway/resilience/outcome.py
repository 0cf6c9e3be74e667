"""Outcome classification, done once and in one place.

Every attempt against a backend ends in exactly one `Outcome`. Breakers,
outlier detection, retries and metrics all read the same classification, so a
client's bad request can never be counted as a backend failure in one place and
not in another.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # 4xx other than 408/429: the caller's fault
    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"  # connection dropped before a complete answer
    TIMEOUT = "timeout"  # per-try timeout or 408
    STATUS_5XX = "5xx"
    STATUS_429 = "429"
    MALFORMED = "malformed"  # truncated, wrong length, unparsable
    CANCELLED = "cancelled"  # lost a hedge race or the client left: nobody's fault

    @property
    def is_failure(self) -> bool:
        """True when the backend is to blame; feeds breakers and outlier detection."""
        return self in _BACKEND_FAILURES

    @property
    def is_countable(self) -> bool:
        """False for outcomes that say nothing about the backend's health."""
        return self not in (Outcome.CANCELLED, Outcome.CLIENT_ERROR)


_BACKEND_FAILURES = frozenset(
    {
        Outcome.CONNECT_FAILURE,
        Outcome.RESET,
        Outcome.TIMEOUT,
        Outcome.STATUS_5XX,
        Outcome.STATUS_429,
        Outcome.MALFORMED,
    }
)


def classify_status(status: int) -> Outcome:
    """Map a complete upstream answer's HTTP status to its outcome."""
    if status < 400:
        return Outcome.SUCCESS
    if status == 429:
        return Outcome.STATUS_429
    if status == 408:
        return Outcome.TIMEOUT
    if status < 500:
        return Outcome.CLIENT_ERROR
    return Outcome.STATUS_5XX


# gRPC statuses the caller caused (a bad request, an unknown model, a missing credential, a call
# it cancelled itself): passed through, never counted against the backend.
GRPC_CLIENT_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "UNIMPLEMENTED",
        "CANCELLED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
    }
)


def classify_grpc(code: str) -> Outcome:
    """Map the gRPC status a backend answered with (its name, like "UNAVAILABLE") to an outcome.

    As Triton means them: `UNAVAILABLE` (model not ready, queue full, server stopping) and
    `INTERNAL`/`UNKNOWN`/`DATA_LOSS`/`ABORTED` are the backend's failures, like a 5xx;
    `RESOURCE_EXHAUSTED` is a 429; `DEADLINE_EXCEEDED` a timeout. Transport failures
    (refused, reset) never reach here: the transport classifies them itself.
    """
    if code == "OK":
        return Outcome.SUCCESS
    if code in GRPC_CLIENT_CODES:
        return Outcome.CLIENT_ERROR
    if code == "DEADLINE_EXCEEDED":
        return Outcome.TIMEOUT
    if code == "RESOURCE_EXHAUSTED":
        return Outcome.STATUS_429
    return Outcome.STATUS_5XX


# Names used by `retries.on` in policies, mapped to the outcomes they cover.
RETRY_CONDITIONS: dict[str, frozenset[Outcome]] = {
    "connect-failure": frozenset({Outcome.CONNECT_FAILURE}),
    "reset": frozenset({Outcome.RESET, Outcome.MALFORMED}),
    "timeout": frozenset({Outcome.TIMEOUT}),
    "5xx": frozenset({Outcome.STATUS_5XX}),
    "429": frozenset({Outcome.STATUS_429}),
}
