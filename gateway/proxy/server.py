"""The HTTP edge: aiohttp's low-level server in, the pipeline, the answer out.

Client-side library exceptions (a slow or vanished client, a bad body) are
turned into the gateway's errors here. The edge also writes streamed answers
chunk by chunk and makes sure a stream that breaks after it started ends with
an explicit error, never as a clean-looking truncated 200.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Protocol

import aiohttp
from aiohttp import HttpVersion10, HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.clock import Clock
from gateway.errors import (
    AttemptFailed,
    BodyTooLarge,
    ClientError,
    CodingNotImplemented,
    RequestTimeout,
    VersionNotSupported,
)
from gateway.policy.compile import Snapshot
from gateway.proxy.answers import error_answer, protocol_for_path, stream_error_event
from gateway.proxy.edge import check_header_bytes, normalize_target
from gateway.proxy.exchange import Exchange, LocalAnswer, ProxyRequest
from gateway.proxy.pipeline import CLIENT_CLOSED, Answer, ExchangeReporter, Handler
from gateway.proxy.transport import UpstreamResponse, forward_headers
from gateway.resilience.outcome import Outcome
from gateway.telemetry.logs import RateLimitedLog

log = logging.getLogger("tailguard.proxy")

MAX_REQUEST_ID = 128


class RequestIds:
    """Unique, cheap ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


class Serving(Protocol):
    """What the edge serves with: the snapshot and the request path composed for it."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def handler(self) -> Handler: ...


# What `ProxyServer.open` gives a listener to pass to `serve`.
Opened = tuple[Exchange, Handler, ClientError | None, bool]


class AnswerWriter(Protocol):
    """How the edge writes one request's answer, whatever server took the request.

    Each listener (aiohttp's, the llhttp one) gives `ProxyServer.serve` one of these per
    request; the framing (Content-Length or chunked, keep-alive or close) is its business.
    """

    async def whole(self, status: int, headers: CIMultiDict[str], body: bytes, close: bool) -> None:
        """Write a complete answer; `close` ends the connection after it."""
        ...

    async def head(self, status: int, headers: CIMultiDict[str], close: bool) -> None:
        """Start a streamed answer (its length unknown)."""
        ...

    async def chunk(self, data: bytes) -> None:
        """Write a piece of a streamed answer; returns once the client can take more."""
        ...

    async def finish(self) -> None:
        """End a streamed answer cleanly."""
        ...

    def abort(self) -> None:
        """Drop the connection: a streamed answer ends with no clean end."""
        ...

    def refuse(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        """Answer in HTTP/1.1 whatever version was asked for, then close."""
        ...


class ProxyServer:
    """Serves client requests with the current snapshot, taken once per request.

    Each request becomes one `Exchange` that ends exactly once, here: after the last byte
    of its answer is written, or when the client went away (the listener cancels the
    serving task, which cancels the attempts and hedges it started). A listener calls
    `open` with what it parsed, sets `body_reader` on the exchange when a body follows,
    and awaits `serve` with its `AnswerWriter`.
    """

    def __init__(
        self,
        current: Callable[[], Serving],
        reporter: ExchangeReporter,
        clock: Clock,
    ) -> None:
        self._current = current
        self._reporter = reporter
        self._clock = clock
        self._ids = RequestIds()
        self._broken = RateLimitedLog(log, clock, "broken streams")

    def open(
        self,
        method: str,
        target: str,
        version_served: bool,
        headers: CIMultiDictProxy[str],
        raw_headers: Iterable[tuple[bytes, bytes]],
        client_ip: str,
        scheme: str,
        problem: ClientError | None = None,
    ) -> Opened:
        """The exchange of a request whose head was parsed, the request path to serve it
        with (composed for the snapshot it took), what is wrong with it, and whether the
        connection must close after its answer: pass them all to `serve`.

        `problem` is what the listener's own parser already found wrong (the head is then
        not checked further). The checks here are the rules every listener keeps: HTTP/1.0
        and 1.1 only, header bytes, the target normalised once, chunked the only transfer
        coding (and the connection closed after it), no protocol switched.
        """
        received = self._clock.now()
        serving = self._current()
        rid = headers.get("x-request-id")
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            rid = self._ids.next()
        # the connection ends after this answer when what follows it cannot be trusted
        close = False
        path = path_qs = ""
        if problem is None:
            try:
                if not version_served:
                    raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 requests are served")
                check_header_bytes(raw_headers, serving.snapshot.settings.limits.max_header_size)
                path, path_qs = normalize_target(target)
                te = headers.get("Transfer-Encoding")
                if te is not None:
                    # chunked is the one coding undone here; trailer fields after the last
                    # chunk are not trusted to stay with their message, so the connection
                    # ends with it
                    close = True
                    if (
                        te.strip().lower() != "chunked"
                        or len(headers.getall("Transfer-Encoding")) > 1
                    ):
                        raise CodingNotImplemented(f"transfer coding {te!r} is not supported")
                if "Upgrade" in headers:
                    # no protocol is switched; bytes after this request are not read as requests
                    close = True
            except ClientError as e:
                problem, path, path_qs = e, "", ""
        if problem is not None:
            close = True
        preq = ProxyRequest(
            method=method,
            path=path,
            path_qs=path_qs,
            headers=headers,
            body=b"",
            request_id=rid,
            client_ip=client_ip,
            scheme=scheme,
            received_at=received,
        )
        reporter = self._reporter
        ex = Exchange(preq, serving.snapshot, protocol_for_path(path), reporter.end)
        reporter.begin(ex)
        tracer = reporter.tracer
        if tracer is not None:
            tracer.start(ex)
        return ex, serving.handler, problem, close

    async def serve(
        self,
        ex: Exchange,
        handler: Handler,
        problem: ClientError | None,
        close: bool,
        out: AnswerWriter,
    ) -> None:
        """Answer the exchange `open` made, through `out`; the exchange has ended on return."""
        status = CLIENT_CLOSED
        rid = ex.request.request_id
        try:
            if problem is not None:
                ex.error_code = problem.code
                refusal = error_answer(ex.protocol, problem, rid)
                if isinstance(problem, VersionNotSupported):
                    headers = CIMultiDict(refusal.headers)
                    ex.response_headers(headers)
                    out.refuse(refusal.status, headers, refusal.body)
                    status = problem.status
                    return
                answer: Answer = refusal
            else:
                answer = await handler(ex)
            if isinstance(answer, LocalAnswer):
                headers = CIMultiDict(answer.headers)
                ex.response_headers(headers)
                await out.whole(answer.status, headers, answer.body, close)
                ex.first_byte_at = self._clock.now()
                ex.sent_bytes = len(answer.body)
                status = answer.status
                return
            up = answer.response
            assert up is not None
            headers = forward_headers(up.headers)
            ex.response_headers(headers)
            ex.response = up
            if up.stream is None:
                body = up.body or b""
                await out.whole(up.status, headers, body, close)
                ex.first_byte_at = self._clock.now()
                ex.sent_bytes = len(body)
                if ex.trace is not None:
                    ex.answer_body = up.body
                status = up.status
                return
            await self._stream(ex, up, headers, close, out)
        finally:
            # every way out ends the exchange once: written, failed to write, or cancelled
            # because the client left (then nothing was sent: 499)
            ex.end(status, ex.stream_outcome)

    async def _stream(
        self,
        ex: Exchange,
        up: UpstreamResponse,
        headers: CIMultiDict[str],
        close: bool,
        out: AnswerWriter,
    ) -> None:
        """Copy a streamed answer as it arrives; end the exchange with how it ended."""
        assert up.stream is not None
        is_sse = up.headers.get("Content-Type", "").startswith("text/event-stream")
        outcome = Outcome.CANCELLED  # what it is if writing to the client fails
        now = self._clock.now
        reporter = self._reporter
        try:
            await out.head(up.status, headers, close)
            ex.first_byte_at = last = now()
            idle = max(ex.deadline - last, 1.0)
            stream = up.stream
            sent = 0
            while True:
                try:
                    chunk = await stream.read_chunk(idle)
                except AttemptFailed as e:
                    broken: Outcome = e.outcome  # type: ignore[assignment]
                    break
                if not chunk:
                    broken = Outcome.SUCCESS
                    break
                await out.chunk(chunk)
                # time to the first token, then the gaps between tokens (one chunk each)
                t = now()
                reporter.chunk_written(ex, t - last if sent else t - ex.request.received_at, sent)
                last = t
                sent += len(chunk)
                ex.sent_bytes = sent
            if broken is Outcome.SUCCESS:
                await out.finish()
                outcome = Outcome.SUCCESS
                return
            outcome = broken
            self._broken.note(
                f"stream from {ex.endpoint} broke after it started ({broken.value}), "
                f"request {ex.request.request_id}"
            )
            if is_sse:
                await out.chunk(
                    stream_error_event(
                        ex.protocol,
                        f"upstream stream ended early: {broken.value}",
                        ex.request.request_id,
                    )
                )
                await out.finish()
            else:
                # no terminating chunk: the client sees an incomplete body, not a clean end
                out.abort()
        finally:
            ex.end(up.status, outcome)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's low-level server calls this for each request it parsed."""
        ex, handler, problem, close = self.open(
            request.method,
            request.raw_path,
            request.version in _SERVED_VERSIONS,
            request.headers,
            request.raw_headers,
            request.remote or "",
            request.scheme,
        )
        if request.body_exists:
            timeout = ex.snapshot.settings.body_timeout
            ex.body_reader = functools.partial(_read_body, request, timeout)
        out = _AiohttpWriter(request)
        try:
            await self.serve(ex, handler, problem, close, out)
        except ConnectionError:
            # the client left while its answer was written: the exchange ended as a 499, and
            # aiohttp, finding the connection closed, writes nothing more (no error to log)
            pass
        return out.response


_SERVED_VERSIONS = (HttpVersion11, HttpVersion10)


class _AiohttpWriter:
    """`AnswerWriter` over aiohttp's response objects; `response` is what the handler returns."""

    __slots__ = ("_request", "response")

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.response: web.StreamResponse = _NOTHING_WRITTEN

    async def whole(self, status: int, headers: CIMultiDict[str], body: bytes, close: bool) -> None:
        resp = self.response = web.Response(status=status, body=body, headers=headers)
        if close:
            resp.force_close()
        await resp.prepare(self._request)
        await resp.write_eof()

    async def head(self, status: int, headers: CIMultiDict[str], close: bool) -> None:
        resp = self.response = web.StreamResponse(status=status, headers=headers)
        if close:
            resp.force_close()
        await resp.prepare(self._request)

    async def chunk(self, data: bytes) -> None:
        await self.response.write(data)

    async def finish(self) -> None:
        await self.response.write_eof()

    def abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def refuse(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        """aiohttp would write the status line in the request's own version ("HTTP/0.9 505"),
        which no HTTP/1.1 client can frame; so the answer is written here, whole."""
        transport = self._request.transport
        if transport is not None:
            transport.write(refusal_bytes(status, headers, body))
            transport.close()
        # aiohttp finds the transport closed and writes nothing more
        self.response = web.Response(status=status)


# The interim answer to `Expect: 100-continue`, sent when the body is wanted (after auth).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expects_continue(headers: Mapping[str, str]) -> bool:
    """The client waits for `100 Continue` before it sends the body (RFC 9110 10.1.1)."""
    expect = headers.get("Expect")
    return expect is not None and expect.lower() == "100-continue"


def refusal_bytes(status: int, headers: CIMultiDict[str], body: bytes) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for a request no server frames."""
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    phrase = HTTPStatus(status).phrase
    return f"HTTP/1.1 {status} {phrase}\r\n{head}\r\n".encode() + body


# A placeholder until an answer is started (never returned: `serve` always writes one).
_NOTHING_WRITTEN = web.StreamResponse()


async def _read_body(request: web.BaseRequest, timeout: float, limit: int) -> bytes:
    """The whole request body as sent (content codings untouched), bounded in size and time."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    content = request.content
    if (
        request.version == HttpVersion11
        and expects_continue(request.headers)
        and not content.is_eof()
        and not content.total_bytes
    ):
        await request.writer.write(CONTINUE)
    try:
        async with asyncio.timeout(timeout):
            if length is not None:
                return await request.content.readexactly(length)
            chunks = []
            size = 0
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g}s") from None
    except asyncio.IncompleteReadError:
        raise ClientError("request body ended before its Content-Length") from None
    except aiohttp.web.HTTPException as e:
        raise ClientError(f"bad request body: {e.reason}") from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise ClientError(f"bad request body: {e}") from None
