"""The gRPC upstream transport: one channel per endpoint, raw bytes both ways.

Messages are never decoded: calls are made with identity serializers, so what the client
sent is what the backend gets, byte for byte. This is the edge where grpcio's exceptions
become the gateway's vocabulary:

- a status the backend sent comes back as a `GrpcResponse` carrying that status, its
  details and trailing metadata, and the outcome `classify_grpc` gives it (so a client's
  `NOT_FOUND` passes through untouched and trips nothing, and a backend's `UNAVAILABLE` is
  a failure that can be retried and still be passed on if nothing better comes);
- a call that never reached a backend (connection refused, channel in backoff) raises
  `AttemptFailed(CONNECT_FAILURE)`; a connection that broke raises `AttemptFailed(RESET)`
  (so does a `CANCELLED` from the backend's side: the gateway cancels its own calls through
  asyncio, so that one was a server cutting its calls); the local deadline raises
  `AttemptFailed(TIMEOUT)`.

The channel does no retries of its own (`grpc.enable_retries` off): retries, hedges and
timeouts are the gateway's, decided once, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import AttemptFailed
from gateway.policy.compile import EndpointSpec
from gateway.proxy.transport import PoolSpec, UpstreamResponse
from gateway.resilience.outcome import Outcome, classify_grpc

Metadata = Sequence[tuple[str, str | bytes]]

# HTTP equivalents of gRPC statuses, for the status-class metrics and the canary's judgement
# (what is >= 500 is the backend's). The client's codes stay below 500.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 500,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 405,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# What grpc core says when no connection could be made, or one broke under a call.
_CONNECT_HINTS = ("failed to connect", "connection refused", "no route to host", "dns resolution")
_RESET_HINTS = (
    "connection reset",
    "socket closed",
    "broken pipe",
    "goaway",
    "stream removed",
    "connection aborted",
    "end of tcp stream",
    "endpoint closing",
    "rst_stream",
)

_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _text_metadata(md: Metadata | None) -> CIMultiDictProxy[str]:
    if not md:
        return _EMPTY
    return CIMultiDictProxy(CIMultiDict((k, v) for k, v in md if isinstance(v, str)))


class GrpcResponse(UpstreamResponse):
    """A backend's answer to one gRPC call: a unary reply (`body`) or a committed stream.

    `status` is the HTTP equivalent of `code` (for metrics); `headers` the backend's initial
    metadata (text values); `trailers` its trailing metadata as sent.
    """

    __slots__ = ("code", "details", "initial", "trailers")

    def __init__(
        self,
        code: str,
        details: str,
        initial: Metadata,
        trailers: Metadata,
        body: bytes | None,
        stream: GrpcStream | None = None,
    ) -> None:
        super().__init__(
            HTTP_STATUS.get(code, 500), _text_metadata(initial), body, stream, classify_grpc(code)
        )
        self.code = code
        self.details = details
        self.initial = tuple(initial)
        self.trailers = tuple(trailers)


class GrpcCallFailed(AttemptFailed):
    """A streamed call ended with a status after it started; `code` and `details` as sent."""

    outcome: Outcome

    def __init__(self, outcome: Outcome, code: str, details: str, trailers: Metadata) -> None:
        super().__init__(outcome, f"{code}: {details}")
        self.code = code
        self.details = details
        self.trailers = tuple(trailers)


def _transport_failure(e: grpc.aio.AioRpcError) -> AttemptFailed | None:
    """The failure when no backend answered this call (refused, reset, local deadline)."""
    code = e.code().name
    if code == "DEADLINE_EXCEEDED" and not e.trailing_metadata():
        return AttemptFailed(Outcome.TIMEOUT, "no answer before the deadline")
    if code == "CANCELLED":
        # The gateway cancels its own calls through asyncio (CancelledError, never this), so a
        # CANCELLED that arrives was the backend's doing: a server going away cuts its calls
        # with RST_STREAM. The connection broke under the call; the client cancelled nothing.
        return AttemptFailed(Outcome.RESET, f"the backend cancelled the call: {e.details()}")
    if code != "UNAVAILABLE":
        return None
    text = f"{e.details() or ''} {e.debug_error_string() or ''}".lower()
    if any(h in text for h in _CONNECT_HINTS):
        return AttemptFailed(Outcome.CONNECT_FAILURE, f"connect failed: {e.details()}")
    if any(h in text for h in _RESET_HINTS):
        return AttemptFailed(Outcome.RESET, f"connection broke: {e.details()}")
    return None


def _answered(e: grpc.aio.AioRpcError) -> GrpcResponse:
    return GrpcResponse(
        e.code().name,
        e.details() or "",
        e.initial_metadata() or (),
        e.trailing_metadata() or (),
        None,
    )


class GrpcStream:
    """The answer side of a bidirectional call already committed to one backend.

    The client's later messages are pumped to the backend by a task of their own, so
    responses flow back while requests still arrive. The holder reads with `read_message`
    until it returns None (the backend ended OK) and then calls `release()`, or calls
    `close()` to abandon it (the backend's call is cancelled).
    """

    __slots__ = ("_call", "_pump", "trailers")

    def __init__(self, call: grpc.aio.StreamStreamCall, rest: AsyncIterator[bytes] | None) -> None:
        self._call = call
        self._pump: asyncio.Task[None] | None = (
            asyncio.ensure_future(self._forward(rest)) if rest is not None else None
        )
        self.trailers: tuple[tuple[str, str | bytes], ...] = ()

    async def _forward(self, rest: AsyncIterator[bytes]) -> None:
        call = self._call
        try:
            async for message in rest:
                await call.write(message)
            await call.done_writing()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            return  # the call ended; the reading side reports how
        except Exception:
            # the client's side broke (it went away): the backend's call goes too
            call.cancel()

    async def initial_metadata(self) -> Metadata:
        return tuple(await self._call.initial_metadata() or ())

    async def read_message(self) -> bytes | None:
        """The next response message, None at a clean end; raises `GrpcCallFailed` else."""
        call = self._call
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        if message is grpc.aio.EOF:
            code = await call.code()
            self.trailers = tuple(await call.trailing_metadata() or ())
            if code is grpc.StatusCode.OK:
                return None
            details = await call.details()
            raise GrpcCallFailed(classify_grpc(code.name), code.name, details or "", self.trailers)
        assert isinstance(message, bytes)
        return message

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        """`UpstreamStream`'s surface: one message (b"" at the end; an empty message is lost)."""
        async with asyncio.timeout(timeout):
            message = await self.read_message()
        return message or b""

    def _failure(self, e: grpc.aio.AioRpcError) -> GrpcCallFailed:
        transport = _transport_failure(e)
        outcome = transport.outcome if transport is not None else classify_grpc(e.code().name)
        self.trailers = tuple(e.trailing_metadata() or ())
        return GrpcCallFailed(outcome, e.code().name, e.details() or "", self.trailers)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self._call.cancel()

    def release(self) -> None:
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()


class GrpcTransport:
    """Calls to one endpoint over one HTTP/2 channel (multiplexed, so no pool to size)."""

    __slots__ = ("_calls", "_channel", "_streams", "address", "pool", "spec")

    def __init__(self, spec: EndpointSpec, pool: PoolSpec, address: str) -> None:
        self.spec = spec
        self.pool = pool
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.enable_retries", 0),
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
                # its own connection, not one shared with other channels to the same address
                ("grpc.use_local_subchannel_pool", 1),
                # a backend that comes back is reached within a second, not minutes
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.client_idle_timeout_ms", max(1000, int(pool.idle_timeout * 1000))),
            ],
        )
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._streams: dict[str, grpc.aio.StreamStreamMultiCallable] = {}

    async def unary(
        self, method: str, body: bytes, metadata: Metadata, timeout: float | None
    ) -> GrpcResponse:
        """One unary call; the reply or the status the backend answered, or `AttemptFailed`."""
        fn = self._calls.get(method)
        if fn is None:
            fn = self._calls[method] = self._channel.unary_unary(method)
        call = fn(body, metadata=metadata, timeout=timeout)
        try:
            reply = await call
            initial = await call.initial_metadata()
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as e:
            failure = _transport_failure(e)
            if failure is not None:
                raise failure from None
            return _answered(e)
        except asyncio.CancelledError:
            call.cancel()
            raise
        return GrpcResponse("OK", "", initial or (), trailers or (), reply)

    async def open_stream(
        self,
        method: str,
        first: bytes,
        rest: AsyncIterator[bytes] | None,
        metadata: Metadata,
        timeout: float | None,
    ) -> GrpcResponse:
        """Start a bidirectional call on a connected channel and send the first message.

        Once it returns, the call is committed to this backend (the client's later messages
        are already flowing to it): it can no longer be retried elsewhere. Before that, a
        backend that cannot be reached raises `AttemptFailed(CONNECT_FAILURE)`.
        """
        await self._connected()
        fn = self._streams.get(method)
        if fn is None:
            fn = self._streams[method] = self._channel.stream_stream(method)
        call = fn(metadata=metadata, timeout=timeout)
        try:
            await call.write(first)
        except grpc.aio.AioRpcError as e:
            failure = _transport_failure(e)
            if failure is not None:
                raise failure from None
            return _answered(e)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as e:  # grpc's "the call already ended" (UsageError, InternalError)
            call.cancel()
            raise AttemptFailed(Outcome.RESET, f"stream could not start: {e!r}") from None
        return GrpcResponse("OK", "", (), (), None, GrpcStream(call, rest))

    async def _connected(self) -> None:
        channel = self._channel
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise AttemptFailed(Outcome.CONNECT_FAILURE, f"cannot connect to {self.address}")
            if state is grpc.ChannelConnectivity.SHUTDOWN:
                raise AttemptFailed(Outcome.CONNECT_FAILURE, "channel closed")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    async def probe(self, method: str, body: bytes, timeout: float) -> bytes:
        """A health probe: the reply's bytes, or `AttemptFailed` for any other end."""
        try:
            response = await self.unary(method, body, (), timeout)
        except AttemptFailed:
            raise
        if response.body is None:
            raise AttemptFailed(response.outcome, f"{response.code}: {response.details}")
        return response.body

    async def close(self, grace: float | None = 5.0) -> None:
        """Close the channel; calls in flight get `grace` seconds to finish (None: cut now)."""
        with contextlib.suppress(Exception):
            await self._channel.close(grace)


__all__ = ["HTTP_STATUS", "GrpcCallFailed", "GrpcResponse", "GrpcStream", "GrpcTransport"]
