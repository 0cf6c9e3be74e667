"""The HTTP edge: aiohttp's low-level server in, the pipeline, the answer out.

Client-side library exceptions (a slow or vanished client, a bad body) are
turned into the gateway's errors here. The edge also writes streamed answers
chunk by chunk and makes sure a stream that breaks after it started ends with
an explicit error, never as a clean-looking truncated 200.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.errors import AttemptFailed, BodyTooLarge, ClientError, RequestTimeout, TailguardError
from gateway.policy.compile import Snapshot
from gateway.proxy.attempts import AttemptResult, AttemptRunner
from gateway.proxy.exchange import Exchange, LocalAnswer, ProxyRequest
from gateway.proxy.pipeline import error_answer
from gateway.proxy.upstream import forward_headers
from gateway.resilience.outcome import Outcome

log = logging.getLogger("tailguard.proxy")

# A client that cannot deliver its body in this long is told so (408) instead of holding a slot.
BODY_READ_TIMEOUT = 30.0
MAX_REQUEST_ID = 128


class RequestIds:
    """Unique, cheap ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


class ProxyServer:
    """Serves client requests with the current snapshot, taken once per request."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        runner: AttemptRunner,
        clock: Clock,
    ) -> None:
        self._current = current
        self._runner = runner
        self._clock = clock
        self._ids = RequestIds()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        received = self._clock.now()
        snapshot = self._current()
        rid = request.headers.get("x-request-id")
        if not rid or len(rid) > MAX_REQUEST_ID or not rid.isprintable():
            rid = self._ids.next()
        try:
            body = await _read_body(request, snapshot.settings.max_body)
            error: TailguardError | None = None
        except TailguardError as e:
            body, error = b"", e
        preq = ProxyRequest(
            method=request.method,
            path=request.path,
            path_qs=request.raw_path,
            headers=request.headers,
            body=body,
            request_id=rid,
            client_ip=request.remote or "",
            scheme=request.scheme,
            received_at=received,
        )
        ex = Exchange(preq, snapshot)
        if error is not None:
            answer: AttemptResult | LocalAnswer = error_answer(ex, error)
        else:
            assert snapshot.pipeline is not None, "the app assembles a snapshot before it serves"
            answer = await snapshot.pipeline(ex)
        if isinstance(answer, LocalAnswer):
            headers = CIMultiDict(answer.headers)
            ex.response_headers(headers)
            return web.Response(status=answer.status, body=answer.body, headers=headers)
        up = answer.response
        assert up is not None
        headers = forward_headers(up.headers)
        ex.response_headers(headers)
        if up.stream is None:
            return web.Response(status=up.status, body=up.body, headers=headers)
        return await self._stream(request, ex, answer, headers)

    async def _stream(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        result: AttemptResult,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """Copy a streamed answer as it arrives; report how it ended to the breaker."""
        up = result.response
        assert up is not None and up.stream is not None and ex.backend is not None
        is_sse = up.headers.get("Content-Type", "").startswith("text/event-stream")
        resp = web.StreamResponse(status=up.status, headers=headers)
        outcome = Outcome.SUCCESS
        try:
            await resp.prepare(request)
            idle = max(ex.deadline - self._clock.now(), 1.0)
            stream = up.stream
            while True:
                try:
                    chunk = await stream.read_chunk(idle)
                except AttemptFailed as e:
                    outcome = e.outcome  # type: ignore[assignment]
                    break
                if not chunk:
                    break
                await resp.write(chunk)
        except BaseException:
            # the client went away (or writing to it failed): nobody's fault but the client's;
            # whatever it was, the upstream connection must not be left open
            up.close()
            self._runner.finish_stream(ex.backend, result, Outcome.CANCELLED)
            raise
        if outcome is Outcome.SUCCESS:
            up.release()
            self._runner.finish_stream(ex.backend, result, outcome)
            await resp.write_eof()
            return resp
        up.close()
        self._runner.finish_stream(ex.backend, result, outcome)
        log.warning(
            "stream from %s broke after it started (%s), request %s",
            ex.endpoint,
            outcome.value,
            ex.request.request_id,
        )
        if is_sse:
            event = {
                "error": {
                    "code": "stream_aborted",
                    "message": f"upstream stream ended early: {outcome.value}",
                    "request_id": ex.request.request_id,
                }
            }
            await resp.write(b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n")
            await resp.write_eof()
        elif request.transport is not None:
            # no terminating chunk: the client sees an incomplete body, not a clean end
            request.transport.abort()
        return resp


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, bounded in size and in time."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    if length == 0 or (length is None and not request.body_exists):
        return b""
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
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
        raise RequestTimeout(f"request body not received within {BODY_READ_TIMEOUT:g}s") from None
    except asyncio.IncompleteReadError:
        raise ClientError("request body ended before its Content-Length") from None
    except aiohttp.web.HTTPException as e:
        raise ClientError(f"bad request body: {e.reason}") from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise ClientError(f"bad request body: {e}") from None
