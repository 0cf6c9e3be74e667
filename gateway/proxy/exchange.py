"""What one client request looks like inside the pipeline.

`ProxyRequest` is the immutable view of what the client sent; `Exchange` is the
per-request record that stages fill in (route, backend, attempts…) and that the
edge turns into `x-tailguard-*` headers, metrics and logs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.policy.compile import BackendRuntime, RouteRuntime, Snapshot
from gateway.proxy.edge import CodingError, ascii_int, decoded, loads_client_json, text_problem
from gateway.resilience.outcome import Outcome

if TYPE_CHECKING:
    from gateway.auth import Identity
    from gateway.proxy.transport import UpstreamResponse
    from gateway.telemetry.tracing import RequestTrace


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


class ProxyRequest:
    """The client's request as received: never modified after the edge builds it.

    A plain slotted class rather than a frozen dataclass: one is built for every request, and
    a frozen dataclass pays an `object.__setattr__` per field (and `dataclasses.replace` a
    field scan) on the hot path. Treat it as immutable; `with_body` makes the one change.
    """

    __slots__ = (
        "body",
        "client_ip",
        "grpc",
        "headers",
        "method",
        "path",
        "path_qs",
        "received_at",
        "request_id",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        path: str,
        path_qs: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        request_id: str,
        client_ip: str,
        scheme: str,
        received_at: float,
        grpc: GrpcCall | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.path_qs = path_qs
        self.headers = headers
        self.body = body
        self.request_id = request_id
        self.client_ip = client_ip
        self.scheme = scheme
        self.received_at = received_at
        self.grpc = grpc

    def __repr__(self) -> str:
        return f"ProxyRequest({self.method} {self.path_qs!r}, id={self.request_id})"

    def with_body(self, body: bytes) -> ProxyRequest:
        """The same request with its body read (the edge reads it after authentication)."""
        return ProxyRequest(
            self.method,
            self.path,
            self.path_qs,
            self.headers,
            body,
            self.request_id,
            self.client_ip,
            self.scheme,
            self.received_at,
            self.grpc,
        )


class Permit(Protocol):
    """Something an exchange holds until it ends (an admission slot)."""

    def release(self) -> None: ...


class Exchange:
    """One request's life: what the stages decided, what it holds, and its single end.

    The edge makes it, the stages fill it in, and the edge calls `end` exactly once: when
    the last byte of the answer is written, or when the client went away. `end` gives back
    everything the exchange holds (admission permits, a streamed upstream connection) and
    reports the outcome once, to whoever the edge registered (`on_end`).
    """

    __slots__ = (
        "answer_body",
        "attempts",
        "backend",
        "body_reader",
        "deadline",
        "deposited",
        "endpoint",
        "error_code",
        "extra_headers",
        "fallback",
        "first_byte_at",
        "hedged",
        "identity",
        "on_end",
        "permits",
        "protocol",
        "request",
        "response",
        "route",
        "sent_bytes",
        "snapshot",
        "split_backend",
        "status",
        "stream_done",
        "stream_outcome",
        "trace",
        "upstream_headers",
    )

    def __init__(
        self,
        request: ProxyRequest,
        snapshot: Snapshot,
        protocol: str = "http",
        on_end: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.request = request
        self.snapshot = snapshot
        # the protocol errors are answered in: guessed from the path, then the route's
        self.protocol = protocol
        self.route: RouteRuntime | None = None
        self.backend: BackendRuntime | None = None
        # the backend the route's split chose, whoever answered in the end (canary accounting)
        self.split_backend: str | None = None
        self.endpoint: str | None = None
        self.deadline = 0.0
        self.attempts = 0
        self.hedged = False
        # retry and hedge budgets take one deposit per client request, fallbacks included
        self.deposited = False
        self.fallback: str | None = None
        self.identity: Identity | None = None
        # headers a stage wants on the answer (rate-limit state, cache age); rarely set
        self.extra_headers: dict[str, str] | None = None
        # built once per request, copied per attempt (each attempt adds its own deadline)
        self.upstream_headers: CIMultiDict[str] | None = None
        # reads the request body when a stage needs it (after authentication)
        self.body_reader: Callable[[int], Awaitable[bytes]] | None = None
        self.permits: list[Permit] | None = None
        # settles a streamed attempt (its connection and its report) with how it ended
        self.stream_done: Callable[[Outcome], None] | None = None
        self.on_end = on_end
        # what the end reports: the status sent, the gateway's error code if it made the
        # answer, and how a stream ended (None: no stream)
        self.status = 0
        self.error_code: str | None = None
        self.stream_outcome: Outcome | None = None
        # the upstream answer the client was sent, if one was (quality sampling reads it)
        self.response: UpstreamResponse | None = None
        # when the answer's head was written (0: not yet) and how many body bytes followed
        self.first_byte_at = 0.0
        self.sent_bytes = 0
        # its spans when tracing is on and its decision trace when asked for (a
        # `RequestTrace`); None otherwise, so a request nobody traces pays one test per hook
        self.trace: RequestTrace | None = None
        # a buffered answer's body, kept only for a traced request (GenAI span attributes)
        self.answer_body: bytes | None = None

    def hold(self, permit: Permit) -> None:
        """Keep `permit` until the exchange ends."""
        if self.permits is None:
            self.permits = [permit]
        else:
            self.permits.append(permit)

    def end(self, status: int, stream_outcome: Outcome | None = None) -> None:
        """The exchange's one end: release what it holds, report once. Later calls do nothing.

        `status` is what the client was sent (499 when it left first); `stream_outcome` how
        a streamed answer ended (CANCELLED when the client left during it).
        """
        if self.status:
            return
        self.status = status
        self.stream_outcome = stream_outcome
        done = self.stream_done
        if done is not None:
            self.stream_done = None
            done(stream_outcome if stream_outcome is not None else Outcome.CANCELLED)
        permits = self.permits
        if permits is not None:
            self.permits = None
            for p in permits:
                p.release()
        if self.on_end is not None:
            self.on_end(self)

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


def json_body_problem(
    headers: Mapping[str, str], body: bytes, *, full: bool, limit: int = 64 << 20
) -> str | None:
    """Why a JSON request body is not JSON, or None; `full` parses, else checks the shape.

    A KServe binary-tensor request carries JSON only in its first
    `Inference-Header-Content-Length` bytes; the rest is raw tensor data. An encoded body
    (`Content-Encoding: gzip`) is judged on its decoded form, at most `limit` bytes of it;
    one in a coding the gateway cannot undo is not judged.
    """
    coding = headers.get("content-encoding")
    if coding:
        try:
            plain = decoded(coding, body, limit)
        except CodingError as e:
            return f"request body: {e}"
        if plain is None:
            return None
        body = plain
    n = ascii_int(headers.get("inference-header-content-length"))
    part = body[:n] if n is not None else body
    if not full:
        b = part.strip()
        if b and ((b[0] == 0x7B and b[-1] == 0x7D) or (b[0] == 0x5B and b[-1] == 0x5D)):
            return text_problem(part)
        return "request body is not valid JSON"
    try:
        loads_client_json(part)
    except (ValueError, RecursionError) as e:
        return f"request body is not valid JSON: {e}"
    return None


class LocalAnswer:
    """An answer the gateway makes itself (errors now; fallbacks later)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
