"""The upstream transport interface: what an answer looks like, and how a pool is sized.

The transport the gateway uses is `gateway.proxy.h1.H1Transport`, a lean HTTP/1.1 client
(about 0.4x the CPU of aiohttp's client per request, measured by `loadtests/h1_micro.py`);
the tests hold a second implementation on aiohttp's client as the reference it is checked
against. A transport is the edge where socket trouble becomes the gateway's vocabulary:
every failure leaves as `AttemptFailed` carrying an `Outcome`, so the attempt logic above
never sees a library exception. Nothing here knows of policies or snapshots.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.edge import CodingError, decoded
from gateway.resilience.outcome import Outcome

# Responses up to this size with a Content-Length are read whole inside the attempt, so a
# truncated or garbled body is still a retryable failure. Larger, chunked or event-stream
# responses are streamed to the client as they arrive and cannot be retried once started.
BUFFER_LIMIT = 1 << 20

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed by the side that writes the body.
RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}


class UpstreamStream(Protocol):
    """A response body still arriving; the holder reads it to the end or drops it."""

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        """The next piece (b"" at the end); raises `AttemptFailed` (RESET, MALFORMED, TIMEOUT)
        after closing the connection."""
        ...

    def close(self) -> None:
        """Drop the connection (failure or abandonment)."""
        ...

    def release(self) -> None:
        """Done with a body read to its end: the connection may serve another request."""
        ...


class UpstreamResponse:
    """An answer from one endpoint: buffered (`body` set) or a committed stream (`stream` set).

    A holder of a streamed response must call `close()` (failure or abandonment) or
    `release()` (read to the end) exactly once, or the connection leaks.
    """

    __slots__ = ("body", "headers", "outcome", "retry_after", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: CIMultiDictProxy[str],
        body: bytes | None,
        stream: UpstreamStream | None,
        outcome: Outcome,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
        self.outcome = outcome
        self.retry_after = headers.get("Retry-After") if outcome.is_failure else None

    def close(self) -> None:
        """Drop the connection: never hand a half-read connection back to the pool."""
        if self.stream is not None:
            self.stream.close()

    def release(self) -> None:
        if self.stream is not None:
            self.stream.release()


def forward_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Response headers the client may see: hop-by-hop and framing headers removed."""
    out: CIMultiDict[str] = CIMultiDict()
    skip = RESPONSE_SKIP
    named = headers.get("Connection")
    extra = {h.strip().lower() for h in named.split(",")} if named else ()
    for k, v in headers.items():
        lk = k.lower()
        if lk in skip or lk in extra:
            continue
        out.add(k, v)
    return out


def no_answer_within(timeout: float) -> str:
    """What an attempt that ran out of time reports, whichever transport timed it."""
    return f"no answer within {timeout * 1000:.0f} ms"


def looks_like_json(body: bytes, content_encoding: str | None = None) -> bool:
    """A cheap guard against garbage or cut-off JSON without parsing the whole answer.

    An encoded answer (the client asked for gzip) is judged on its decoded form; one in a
    coding the gateway cannot undo passes unjudged, and a corrupt encoding fails.
    """
    if content_encoding:
        try:
            plain = decoded(content_encoding, body, BUFFER_LIMIT * 64)
        except CodingError:
            return False
        if plain is None:
            return True
        body = plain
    b = body.strip()
    return bool(b) and ((b[0] == 0x7B and b[-1] == 0x7D) or (b[0] == 0x5B and b[-1] == 0x5D))


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """How one endpoint's connection pool is sized and timed."""

    max_connections: int
    connect_timeout: float
    idle_timeout: float


class Transport(Protocol):
    """Sends attempts to one endpoint; what the attempt runner and health checker need."""

    pool: PoolSpec

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """One attempt, failed with `AttemptFailed(TIMEOUT)` when `timeout` seconds pass
        before a buffered answer's last byte (or a streamed answer's head)."""
        ...

    async def get_status(
        self, path: str, timeout: float, expect: Container[int] | None = None
    ) -> int:
        """A health probe's status; after a status outside `expect` (or a failure) the next
        probe uses a fresh connection."""
        ...

    async def close(self) -> None: ...


__all__ = [
    "BUFFER_LIMIT",
    "HOP_BY_HOP",
    "RESPONSE_SKIP",
    "PoolSpec",
    "Transport",
    "UpstreamResponse",
    "UpstreamStream",
    "forward_headers",
    "looks_like_json",
    "no_answer_within",
]
