"""The gRPC edge: `inference.GRPCInferenceService` in, the same pipeline as HTTP, raw bytes out.

Every method of Triton's service is served by one generic handler with identity
serializers: messages are never decoded. A call becomes a `ProxyRequest` whose `path` is
the KServe v2 HTTP path of the same operation (`ModelInfer` of model `m` is
`POST /v2/models/m/infer`, `ModelReady` is `GET /v2/models/m/ready`, `ServerReady` is
`GET /v2/health/ready`...), so the policy's routes, `match.model`, splits, auth, rate
limits, admission, retries, hedging, breakers and fallbacks apply to gRPC exactly as they
do to HTTP; `path_qs` is the gRPC method, which is what goes upstream. Metadata are the
headers (`x-api-key`, a sticky header, `x-request-id`). The client's `grpc-timeout`
bounds the route's deadline, and what remains of it is the upstream call's deadline.

Answers: a backend's reply passes through with its initial and trailing metadata; the
gateway's `x-request-id` and `x-tailguard-*` keys are added to the trailing metadata (so
they never cost a write of their own); a status the backend sent passes through as sent; a gateway-made error becomes the gRPC status a Triton user expects
(`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `UNAUTHENTICATED`...) with a readable message, its
code and the request id in trailing metadata. `ModelStreamInfer` is routed by its first
message and then passed message by message both ways; a backend that breaks mid-stream
ends the client's stream with `UNAVAILABLE` (a started stream is never retried).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.clock import Clock
from gateway.policy.compile import GrpcLimits
from gateway.proxy.answers import ERROR_HEADER
from gateway.proxy.exchange import Exchange, GrpcCall, LocalAnswer, ProxyRequest
from gateway.proxy.grpc_upstream import GrpcCallFailed, GrpcResponse, GrpcStream, Metadata
from gateway.proxy.grpc_wire import WireError, read_string, scan_request, with_string_field
from gateway.proxy.pipeline import CLIENT_CLOSED, ExchangeReporter
from gateway.proxy.server import MAX_REQUEST_ID, RequestIds, Serving
from gateway.resilience.outcome import Outcome
from gateway.telemetry.logs import RateLimitedLog

log = logging.getLogger("tailguard.proxy")

SERVICE = "inference.GRPCInferenceService"
PREFIX = f"/{SERVICE}/"

# Metadata a proxy must not copy upstream: the transport's own, and pseudo-headers.
_TRANSPORT_KEYS = frozenset(
    {
        "user-agent",
        "content-type",
        "te",
        "host",
        "connection",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
    }
)

# The gRPC status of each gateway error, by its HTTP status.
_CODE_FOR_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_CODES = {c.name: c for c in grpc.StatusCode}


def status_code_for(status: int) -> grpc.StatusCode:
    """The gRPC status a gateway error with this HTTP status is reported with."""
    code = _CODE_FOR_STATUS.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


@dataclass(frozen=True, slots=True)
class MethodShape:
    """How one method of the service maps onto its KServe v2 HTTP equivalent."""

    http_method: str
    path: Callable[[str, str], str]  # (model, version) -> path
    model_field: int = 0  # where the request names its model (0: it does not)
    version_field: int = 0


def _model_path(suffix: str) -> Callable[[str, str], str]:
    def path(model: str, version: str) -> str:
        base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        return base + suffix

    return path


def _fixed(path: str) -> Callable[[str, str], str]:
    return lambda _m, _v: path


METHODS: dict[str, MethodShape] = {
    "ServerLive": MethodShape("GET", _fixed("/v2/health/live")),
    "ServerReady": MethodShape("GET", _fixed("/v2/health/ready")),
    "ServerMetadata": MethodShape("GET", _fixed("/v2")),
    "ModelReady": MethodShape("GET", _model_path("/ready"), 1, 2),
    "ModelMetadata": MethodShape("GET", _model_path(""), 1, 2),
    "ModelConfig": MethodShape("GET", _model_path("/config"), 1, 2),
    "ModelStatistics": MethodShape("GET", _model_path("/stats"), 1, 2),
    "ModelInfer": MethodShape("POST", _model_path("/infer"), 1, 2),
    "ModelStreamInfer": MethodShape("POST", _model_path("/infer"), 1, 2),
    "RepositoryIndex": MethodShape("POST", _fixed("/v2/repository/index")),
    "RepositoryModelLoad": MethodShape("POST", lambda m, _v: f"/v2/repository/models/{m}/load", 2),
    "RepositoryModelUnload": MethodShape(
        "POST", lambda m, _v: f"/v2/repository/models/{m}/unload", 2
    ),
    "SystemSharedMemoryStatus": MethodShape("GET", _fixed("/v2/systemsharedmemory/status")),
    "SystemSharedMemoryRegister": MethodShape("POST", _fixed("/v2/systemsharedmemory/register")),
    "SystemSharedMemoryUnregister": MethodShape(
        "POST", _fixed("/v2/systemsharedmemory/unregister")
    ),
    "CudaSharedMemoryStatus": MethodShape("GET", _fixed("/v2/cudasharedmemory/status")),
    "CudaSharedMemoryRegister": MethodShape("POST", _fixed("/v2/cudasharedmemory/register")),
    "CudaSharedMemoryUnregister": MethodShape("POST", _fixed("/v2/cudasharedmemory/unregister")),
    "TraceSetting": MethodShape("POST", _fixed("/v2/trace/setting")),
    "LogSettings": MethodShape("POST", _fixed("/v2/logging")),
}
STREAM_METHODS = frozenset({"ModelStreamInfer"})


# gRPC takes its times as 32-bit milliseconds; a bigger value means "never".
_MAX_MS = 2**31 - 1


def _ms(seconds: float | None) -> int:
    return _MAX_MS if seconds is None else min(_MAX_MS, max(1, round(seconds * 1000)))


def server_options(limits: GrpcLimits) -> list[tuple[str, int]]:
    """The `grpc.aio.server` options that enforce `limits` on every client connection.

    What each one does, as grpc core has it:
    - messages larger than the limits end the call `RESOURCE_EXHAUSTED` before the handler
      runs (received) or instead of the answer (sent);
    - metadata larger than `max_metadata_size` (names, values and 32 bytes per entry) end the
      call before it reaches the gateway (soft and hard limit equal: no random refusals);
    - more than `max_connections` connections: new ones are closed as they arrive;
    - a connection without its HTTP/2 handshake after `handshake_timeout` is closed;
    - calls beyond `max_concurrent_streams` on one connection wait in the client (HTTP/2
      flow control), they are not refused;
    - a connection with no call for `max_connection_idle`, or older than
      `max_connection_age` (+-10 % jitter), gets GOAWAY: clients reconnect for the next call;
      calls in flight at the age get `max_connection_age_grace` to finish;
    - a client pinging more often than `min_ping_interval` without data (or at all, while
      it has no call, unless `permit_keepalive_without_calls`) gets a strike; past
      `max_ping_strikes` the connection is closed with GOAWAY `too_many_pings`
      (0 strikes: never);
    - the server pings an idle client every `keepalive_time` and drops it when no answer
      comes within `keepalive_timeout` (a peer that vanished does not hold a slot).
    """
    options = [
        ("grpc.max_receive_message_length", limits.max_receive_message),
        ("grpc.max_send_message_length", limits.max_send_message),
        ("grpc.max_metadata_size", limits.max_metadata_size),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_size),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", _ms(limits.handshake_timeout)),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", _ms(limits.max_connection_idle)),
        ("grpc.max_connection_age_ms", _ms(limits.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", _ms(limits.max_connection_age_grace)),
        ("grpc.keepalive_time_ms", _ms(limits.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(limits.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", int(limits.permit_keepalive_without_calls)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(limits.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
        ("grpc.http2.max_pings_without_data", limits.max_pings_without_data),
    ]
    return options


def _peer_ip(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` -> the address alone."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return rest


class _Refused(Exception):
    """The call cannot even enter the pipeline (bytes that are not a message)."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class GrpcEdge:
    """Serves gRPC calls with the current snapshot, taken once per call."""

    def __init__(
        self,
        current: Callable[[], Serving],
        reporter: ExchangeReporter,
        clock: Clock,
        ids: RequestIds | None = None,
    ) -> None:
        self._current = current
        self._reporter = reporter
        self._clock = clock
        self._ids = ids or RequestIds()
        self._broken = RateLimitedLog(log, clock, "broken gRPC streams")
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name in METHODS:
            if name in STREAM_METHODS:
                handlers[name] = grpc.stream_stream_rpc_method_handler(self._stream_call(name))
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(self._unary_call(name))
        self.handler = grpc.method_handlers_generic_handler(SERVICE, handlers)

    # --- the request -------------------------------------------------------------------

    def _exchange(
        self,
        name: str,
        body: bytes,
        context: grpc.aio.ServicerContext,
        rest: AsyncIterator[bytes] | None,
    ) -> tuple[Exchange, Serving]:
        """The call as an exchange (begun: its end is the caller's to make, exactly once)."""
        received = self._clock.now()
        serving = self._current()
        snapshot = serving.snapshot
        shape = METHODS[name]
        model = version = ""
        sequence = None
        if shape.model_field:
            try:
                scan = scan_request(body, shape.model_field, shape.version_field)
            except WireError as e:
                raise _Refused(f"the request is not a valid {name} message: {e}") from None
            model, version, seq = scan.model, scan.version, scan.sequence
            sequence = seq.id if seq is not None else None
        raw: Metadata = context.invocation_metadata() or ()
        headers: CIMultiDict[str] = CIMultiDict()
        upstream: list[tuple[str, str | bytes]] = []
        strip = snapshot.strip_headers
        rid = ""
        forwarded_for = ""
        for k, v in raw:
            if isinstance(v, str):
                headers.add(k, v)
            if k == "x-request-id" and isinstance(v, str):
                rid = v
            elif k == "x-forwarded-for" and isinstance(v, str):
                forwarded_for = f"{forwarded_for}, {v}" if forwarded_for else v
            elif not (k[0] == ":" or k.startswith("grpc-") or k in _TRANSPORT_KEYS or k in strip):
                upstream.append((k, v))
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            rid = self._ids.next()
        ip = _peer_ip(context.peer() or "")
        upstream.append(("x-forwarded-for", f"{forwarded_for}, {ip}" if forwarded_for else ip))
        upstream.append(("x-request-id", rid))
        left = context.time_remaining()
        call = GrpcCall(
            # made once: grpc would otherwise rebuild it from a tuple on every attempt
            metadata=grpc.aio.Metadata(*upstream),
            deadline=received + left if left is not None else None,
            sequence=sequence,
            stream=rest is not None,
            rest=rest,
        )
        req = ProxyRequest(
            method=shape.http_method,
            path=shape.path(model, version),
            path_qs=PREFIX + name,
            headers=CIMultiDictProxy(headers),
            body=body,
            request_id=rid,
            client_ip=ip,
            scheme="grpc",
            received_at=received,
            grpc=call,
        )
        reporter = self._reporter
        ex = Exchange(req, snapshot, "grpc", reporter.end)
        reporter.begin(ex)
        return ex, serving

    # --- unary ---------------------------------------------------------------------------

    def _unary_call(self, name: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        rewrite_id = name == "ModelInfer"

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                ex, serving = self._exchange(name, body, context, None)
            except _Refused as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.details)
            status = CLIENT_CLOSED
            try:
                answer = await serving.handler(ex)
                if isinstance(answer, LocalAnswer):
                    status = answer.status
                    return await self._local(ex, answer, context, rewrite_id)
                up = answer.response
                assert isinstance(up, GrpcResponse)
                status = up.status
                return await self._reply(ex, up, context)
            finally:
                # every way out ends the exchange once: answered, aborted with a status, or
                # cancelled because the client left or its deadline passed (499)
                ex.end(status)

        return handle

    async def _reply(
        self, ex: Exchange, up: GrpcResponse, context: grpc.aio.ServicerContext
    ) -> bytes:
        ours = _gateway_metadata(ex)
        if up.code != "OK":
            code = _CODES.get(up.code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, up.details, (*up.trailers, *ours))
        if up.initial:
            # the backend's own initial metadata stay initial; sending them is a write of its
            # own, so the gateway's facts never cause one (they travel as trailers)
            await context.send_initial_metadata(up.initial)
        context.set_trailing_metadata((*up.trailers, *ours))
        assert up.body is not None
        return up.body

    async def _local(
        self,
        ex: Exchange,
        answer: LocalAnswer,
        context: grpc.aio.ServicerContext,
        rewrite_id: bool,
    ) -> bytes:
        ours = _gateway_metadata(ex, answer.headers)
        code = answer.headers.get(ERROR_HEADER)
        if code is not None:
            await _abort_with(context, ex, answer, code, ours)
        if answer.status >= 300:  # a fallback's answer in another protocol: not for gRPC
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"tailguard: no gRPC answer available (fallback answered HTTP {answer.status})",
                ours,
            )
        context.set_trailing_metadata(ours)
        body = answer.body
        if rewrite_id:
            # a cached answer was made for another request: it names this one instead
            body = with_string_field(body, 3, read_string(ex.request.body, 3))
        return body

    # --- streams -------------------------------------------------------------------------

    def _stream_call(
        self, name: str
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Any]:
        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            first = await anext(aiter(requests), None)
            if first is None:
                return  # the client closed without a request: nothing to route, nothing to say
            try:
                ex, serving = self._exchange(name, first, context, requests)
            except _Refused as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.details)
            status = CLIENT_CLOSED
            try:
                answer = await serving.handler(ex)
                if isinstance(answer, LocalAnswer):
                    status = answer.status
                    ours = _gateway_metadata(ex, answer.headers)
                    code = answer.headers.get(ERROR_HEADER, "no_answer")
                    await _abort_with(context, ex, answer, code, ours)
                up = answer.response
                assert isinstance(up, GrpcResponse)
                status = up.status
                if up.stream is None:
                    await self._reply(ex, up, context)
                    return
                await self._copy(ex, up, context)
            finally:
                ex.end(status, ex.stream_outcome)

        return handle

    async def _copy(
        self, ex: Exchange, up: GrpcResponse, context: grpc.aio.ServicerContext
    ) -> None:
        """Pass the backend's responses on as they come; record how the stream ended.

        The exchange's end (the caller's) settles the backend's call and reports it once.
        """
        stream = up.stream
        assert isinstance(stream, GrpcStream)
        ours = _gateway_metadata(ex)
        failure: GrpcCallFailed | None = None
        started = False
        ex.stream_outcome = Outcome.CANCELLED  # what it is if writing to the client fails
        while True:
            try:
                message = await stream.read_message()
            except GrpcCallFailed as e:
                failure = e
                break
            if message is None:
                break
            if not started:
                initial = await stream.initial_metadata()
                if initial:
                    await context.send_initial_metadata(initial)
                started = True
            await context.write(message)
        trailers = stream.trailers
        if failure is None:
            ex.stream_outcome = Outcome.SUCCESS
            context.set_trailing_metadata((*trailers, *ours))
            return
        ex.stream_outcome = failure.outcome
        if not failure.outcome.is_failure:
            # the backend ended the stream with the client's own error: pass it on as sent
            code = _CODES.get(failure.code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, failure.details, (*trailers, *ours))
        self._broken.note(
            f"gRPC stream from {ex.endpoint} broke after it started ({failure.message}), "
            f"request {ex.request.request_id}"
        )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"tailguard stream_aborted: the backend's stream ended early ({failure.message}); "
            "a started stream is not retried",
            (*trailers, *ours, (ERROR_HEADER, "stream_aborted")),
        )


def _gateway_metadata(
    ex: Exchange, extra: dict[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """`x-request-id` and the `x-tailguard-*` facts (`Exchange.response_headers`) as metadata."""
    out = [("x-request-id", ex.request.request_id)]
    if ex.route is not None:
        out.append(("x-tailguard-route", ex.route.name))
    if ex.backend is not None:
        out.append(("x-tailguard-backend", ex.backend.name))
    if ex.endpoint is not None:
        out.append(("x-tailguard-endpoint", ex.endpoint))
    if ex.attempts:
        out.append(("x-tailguard-attempts", str(ex.attempts)))
        out.append(("x-tailguard-hedged", "true" if ex.hedged else "false"))
    if ex.fallback is not None:
        out.append(("x-tailguard-fallback", ex.fallback))
    if ex.extra_headers:
        out.extend((k.lower(), v) for k, v in ex.extra_headers.items())
    if extra:
        out.extend(
            (k.lower(), v)
            for k, v in extra.items()
            if k.lower() not in ("content-type", "content-encoding")
        )
    return tuple(out)


async def _abort_with(
    context: grpc.aio.ServicerContext,
    ex: Exchange,
    answer: LocalAnswer,
    code: str,
    ours: tuple[tuple[str, str], ...],
) -> NoReturn:
    """End the call with the gateway's own error, said the way a Triton user reads it."""
    message = answer.body.decode(errors="replace")
    details = f"tailguard {code}: {message} (request {ex.request.request_id})"
    await context.abort(status_code_for(answer.status), details, ours)
    raise AssertionError("context.abort raises")  # pragma: no cover


__all__ = ["METHODS", "SERVICE", "GrpcEdge", "server_options", "status_code_for"]
