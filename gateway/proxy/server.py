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
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

import aiohttp
from aiohttp import HttpVersion10, HttpVersion11, web
from multidict import CIMultiDict

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


class ProxyServer:
    """Serves client requests with the current snapshot, taken once per request.

    Each request becomes one `Exchange` that ends exactly once, here: after the last byte
    of its answer is written, or when the client went away (aiohttp cancels the handler,
    which cancels the attempts and hedges it started).
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

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        received = self._clock.now()
        serving = self._current()
        headers = request.headers
        rid = headers.get("x-request-id")
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            rid = self._ids.next()
        target = request.raw_path
        problem: ClientError | None = None
        # the connection ends after this answer when what follows it cannot be trusted
        close = False
        try:
            if request.version not in _SERVED_VERSIONS:
                raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 requests are served")
            check_header_bytes(
                request.raw_headers, serving.snapshot.settings.limits.max_header_size
            )
            path, path_qs = normalize_target(target)
            te = headers.get("Transfer-Encoding")
            if te is not None:
                # chunked is the one coding undone here; trailer fields after the last chunk
                # are not trusted to stay with their message, so the connection ends with it
                close = True
                if te.strip().lower() != "chunked" or len(headers.getall("Transfer-Encoding")) > 1:
                    raise CodingNotImplemented(f"transfer coding {te!r} is not supported")
            if "Upgrade" in headers:
                # no protocol is switched; bytes after this request are not read as requests
                close = True
        except ClientError as e:
            problem, path, path_qs, close = e, "", "", True
        preq = ProxyRequest(
            method=request.method,
            path=path,
            path_qs=path_qs,
            headers=headers,
            body=b"",
            request_id=rid,
            client_ip=request.remote or "",
            scheme=request.scheme,
            received_at=received,
        )
        reporter = self._reporter
        ex = Exchange(preq, serving.snapshot, protocol_for_path(path), reporter.end)
        reporter.begin(ex)
        if request.body_exists:
            timeout = serving.snapshot.settings.body_timeout
            ex.body_reader = functools.partial(_read_body, request, timeout)
        status = CLIENT_CLOSED
        try:
            if problem is not None:
                ex.error_code = problem.code
                refusal = error_answer(ex.protocol, problem, rid)
                if isinstance(problem, VersionNotSupported):
                    status = problem.status
                    return _refuse_in_http11(request, ex, refusal)
                answer: Answer = refusal
            else:
                answer = await serving.handler(ex)
            if isinstance(answer, LocalAnswer):
                out = CIMultiDict(answer.headers)
                ex.response_headers(out)
                resp = web.Response(status=answer.status, body=answer.body, headers=out)
                if close:
                    resp.force_close()
                await resp.prepare(request)
                await resp.write_eof()
                status = answer.status
                return resp
            up = answer.response
            assert up is not None
            out = forward_headers(up.headers)
            ex.response_headers(out)
            ex.response = up
            if up.stream is None:
                resp = web.Response(status=up.status, body=up.body, headers=out)
                if close:
                    resp.force_close()
                await resp.prepare(request)
                await resp.write_eof()
                status = up.status
                return resp
            return await self._stream(request, ex, up, out, close)
        finally:
            # every way out ends the exchange once: written, failed to write, or cancelled
            # because the client left (then nothing was sent: 499)
            ex.end(status, ex.stream_outcome)

    async def _stream(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        up: UpstreamResponse,
        headers: CIMultiDict[str],
        close: bool,
    ) -> web.StreamResponse:
        """Copy a streamed answer as it arrives; end the exchange with how it ended."""
        assert up.stream is not None
        is_sse = up.headers.get("Content-Type", "").startswith("text/event-stream")
        resp = web.StreamResponse(status=up.status, headers=headers)
        if close:
            resp.force_close()
        outcome = Outcome.CANCELLED  # what it is if writing to the client fails
        try:
            await resp.prepare(request)
            idle = max(ex.deadline - self._clock.now(), 1.0)
            stream = up.stream
            while True:
                try:
                    chunk = await stream.read_chunk(idle)
                except AttemptFailed as e:
                    broken: Outcome = e.outcome  # type: ignore[assignment]
                    break
                if not chunk:
                    broken = Outcome.SUCCESS
                    break
                await resp.write(chunk)
            if broken is Outcome.SUCCESS:
                await resp.write_eof()
                outcome = Outcome.SUCCESS
                return resp
            outcome = broken
            self._broken.note(
                f"stream from {ex.endpoint} broke after it started ({broken.value}), "
                f"request {ex.request.request_id}"
            )
            if is_sse:
                await resp.write(
                    stream_error_event(
                        ex.protocol,
                        f"upstream stream ended early: {broken.value}",
                        ex.request.request_id,
                    )
                )
                await resp.write_eof()
            elif request.transport is not None:
                # no terminating chunk: the client sees an incomplete body, not a clean end
                request.transport.abort()
            return resp
        finally:
            ex.end(up.status, outcome)


_SERVED_VERSIONS = (HttpVersion11, HttpVersion10)


def _refuse_in_http11(
    request: web.BaseRequest, ex: Exchange, answer: LocalAnswer
) -> web.StreamResponse:
    """Answer a request of another HTTP version in HTTP/1.1, then close.

    aiohttp would write the status line in the request's own version ("HTTP/0.9 505"),
    which no HTTP/1.1 client can frame; so the answer is written here, whole.
    """
    out = CIMultiDict(answer.headers)
    ex.response_headers(out)
    out["Content-Length"] = str(len(answer.body))
    out["Connection"] = "close"
    head = "".join(f"{k}: {v}\r\n" for k, v in out.items())
    transport = request.transport
    if transport is not None:
        transport.write(
            f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}\r\n{head}\r\n".encode()
            + answer.body
        )
        transport.close()
    # aiohttp finds the transport closed and writes nothing more
    return web.Response(status=answer.status)


async def _read_body(request: web.BaseRequest, timeout: float, limit: int) -> bytes:
    """The whole request body as sent (content codings untouched), bounded in size and time."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
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
