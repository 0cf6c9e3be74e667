"""What one client request looks like inside the pipeline.

`ProxyRequest` is the immutable view of what the client sent; `Exchange` is the
per-request record that stages fill in (route, backend, attempts…) and that the
edge turns into `x-tailguard-*` headers, metrics and logs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.policy.compile import BackendRuntime, RouteRuntime, Snapshot

if TYPE_CHECKING:
    from gateway.auth import Identity
    from gateway.errors import TailguardError


@dataclass(frozen=True, slots=True)
class GrpcCall:
    """What a gRPC request adds to `ProxyRequest` (whose `path_qs` is then the gRPC method).

    `metadata` is what goes upstream (the client's, minus transport and gateway-only keys,
    plus the request id); `deadline` the client's own (`grpc-timeout`) on the gateway's
    clock, or None; `sequence` the Triton sequence id (such requests are never retried nor
    hedged, and stick to one endpoint); `stream` marks `ModelStreamInfer`, whose later
    messages `rest` yields (the body is the first one).
    """

    metadata: Sequence[tuple[str, str | bytes]]
    deadline: float | None
    sequence: str | None = None
    stream: bool = False
    rest: AsyncIterator[bytes] | None = None

    @property
    def single_shot(self) -> bool:
        """True when the request may reach one endpoint once, and no other."""
        return self.stream or self.sequence is not None


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """The client's request as received: never modified after the edge builds it."""

    method: str
    path: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes
    request_id: str
    client_ip: str
    scheme: str
    received_at: float
    grpc: GrpcCall | None = None


class Exchange:
    """Mutable bookkeeping of one request as it moves through the stages."""

    __slots__ = (
        "attempts",
        "backend",
        "deadline",
        "endpoint",
        "extra_headers",
        "fallback",
        "hedged",
        "identity",
        "request",
        "route",
        "snapshot",
        "split_backend",
        "tried",
        "upstream_headers",
    )

    def __init__(self, request: ProxyRequest, snapshot: Snapshot) -> None:
        self.request = request
        self.snapshot = snapshot
        self.route: RouteRuntime | None = None
        self.backend: BackendRuntime | None = None
        # the backend the route's split chose, whoever answered in the end (canary accounting)
        self.split_backend: str | None = None
        self.endpoint: str | None = None
        self.deadline = 0.0
        self.attempts = 0
        self.hedged = False
        self.fallback: str | None = None
        self.identity: Identity | None = None
        # headers a stage wants on the answer (rate-limit state, cache age); rarely set
        self.extra_headers: dict[str, str] | None = None
        self.tried: list[str] = []
        # built once per request, copied per attempt (each attempt adds its own deadline)
        self.upstream_headers: CIMultiDict[str] | None = None

    def add_headers(self, headers: dict[str, str]) -> None:
        """Headers a stage wants on the answer, next to those other stages asked for."""
        if self.extra_headers is None:
            self.extra_headers = headers
        else:
            self.extra_headers.update(headers)

    def response_headers(self, headers: CIMultiDict[str]) -> None:
        """Say what happened, on every answer the gateway gives."""
        headers["x-request-id"] = self.request.request_id
        if self.route is not None:
            headers["x-tailguard-route"] = self.route.name
        if self.backend is not None:
            headers["x-tailguard-backend"] = self.backend.name
        if self.endpoint is not None:
            headers["x-tailguard-endpoint"] = self.endpoint
        if self.attempts:
            headers["x-tailguard-attempts"] = str(self.attempts)
            headers["x-tailguard-hedged"] = "true" if self.hedged else "false"
        if self.fallback is not None:
            headers["x-tailguard-fallback"] = self.fallback
        if self.extra_headers:
            headers.update(self.extra_headers)


def json_body_problem(headers: Mapping[str, str], body: bytes, *, full: bool) -> str | None:
    """Why a JSON request body is not JSON, or None; `full` parses, else checks the shape.

    A KServe binary-tensor request carries JSON only in its first
    `Inference-Header-Content-Length` bytes; the rest is raw tensor data.
    """
    n = headers.get("inference-header-content-length")
    part = body[: int(n)] if n is not None and n.isdigit() else body
    if not full:
        b = part.strip()
        if b and ((b[0] == 0x7B and b[-1] == 0x7D) or (b[0] == 0x5B and b[-1] == 0x5D)):
            return None
        return "request body is not valid JSON"
    try:
        json.loads(part)
    except ValueError as e:
        return f"request body is not valid JSON: {e}"
    return None


class LocalAnswer:
    """An answer the gateway makes itself: an error (`error` set) or a fallback's answer."""

    __slots__ = ("body", "error", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        error: TailguardError | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        # the gateway's own error this answer reports (the gRPC edge turns it into a status)
        self.error = error
