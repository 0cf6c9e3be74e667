"""Upstream transports: one bounded keep-alive pool per endpoint, and what an answer looks like.

The transport the gateway uses is `gateway.proxy.h1.H1Transport`, a lean HTTP/1.1 client
(about 0.4x the CPU of aiohttp's client per request, measured by `loadtests/h1_micro.py`).
`HttpTransport` here is the same contract on aiohttp's client: the reference the lean one
is tested against, outcome for outcome. Either way this is the edge where client library
exceptions become the gateway's vocabulary: every failure leaves as `AttemptFailed`
carrying an `Outcome`, so the attempt logic above never sees a library exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Mapping
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import AttemptFailed
from gateway.policy.compile import EndpointSpec, PoolSpec
from gateway.resilience.outcome import Outcome, classify_status

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


def _looks_like_json(body: bytes) -> bool:
    """A cheap guard against garbage or cut-off JSON without parsing the whole answer."""
    b = body.strip()
    return bool(b) and ((b[0] == 0x7B and b[-1] == 0x7D) or (b[0] == 0x5B and b[-1] == 0x5D))


class AiohttpStream:
    """`UpstreamStream` over an aiohttp response, translating its exceptions."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._resp.content.readany()
        except TimeoutError:
            self._resp.close()
            raise AttemptFailed(Outcome.TIMEOUT, f"no data within {timeout:g}s") from None
        except aiohttp.ClientPayloadError as e:
            self._resp.close()
            raise AttemptFailed(Outcome.MALFORMED, f"bad response body: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            self._resp.close()
            raise AttemptFailed(Outcome.RESET, f"reset while streaming: {e!r}") from None

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class HttpTransport:
    """Sends attempts to one endpoint over a bounded keep-alive pool."""

    __slots__ = ("_session", "check_json", "pool", "spec")

    def __init__(self, spec: EndpointSpec, pool: PoolSpec, *, check_json: bool) -> None:
        self.spec = spec
        self.pool = pool
        self.check_json = check_json
        connector = aiohttp.TCPConnector(
            limit=pool.max_connections,
            keepalive_timeout=pool.idle_timeout,
            ttl_dns_cache=30,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=pool.connect_timeout, sock_connect=pool.connect_timeout
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )

    async def send(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> UpstreamResponse:
        """One attempt. The caller bounds it with its own timeout and classifies nothing further.

        Raises `AttemptFailed` for every failure that produced no usable HTTP answer. HTTP error
        statuses are returned (with their outcome), not raised, so they can be passed through.
        """
        try:
            resp = await self._session.request(
                method,
                self.spec.url + path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ConnectionTimeoutError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect timeout: {e}") from None
        except aiohttp.ClientConnectorError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect failed: {e.os_error}") from None
        except aiohttp.ServerTimeoutError as e:
            raise AttemptFailed(Outcome.TIMEOUT, f"read timeout: {e}") from None
        except aiohttp.ClientResponseError as e:
            raise AttemptFailed(Outcome.MALFORMED, f"malformed response: {e.message}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            raise AttemptFailed(Outcome.RESET, f"connection reset: {e}") from None
        except aiohttp.ClientError as e:
            raise AttemptFailed(Outcome.RESET, f"upstream error: {e!r}") from None

        outcome = classify_status(resp.status)
        length = resp.content_length
        ctype = resp.headers.get("Content-Type", "")
        if (
            (length is None and method != "HEAD" and resp.status not in (204, 304))
            or (length is not None and length > BUFFER_LIMIT)
            or ctype.startswith("text/event-stream")
        ):
            return UpstreamResponse(resp.status, resp.headers, None, AiohttpStream(resp), outcome)
        try:
            data = await resp.read()
        except aiohttp.ClientPayloadError as e:
            resp.close()
            raise AttemptFailed(Outcome.MALFORMED, f"truncated response body: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            resp.close()
            raise AttemptFailed(Outcome.RESET, f"reset while reading the body: {e!r}") from None
        except BaseException:
            resp.close()
            raise
        if (
            self.check_json
            and outcome is Outcome.SUCCESS
            and "json" in ctype
            and not _looks_like_json(data)
        ):
            raise AttemptFailed(Outcome.MALFORMED, "backend answered with malformed JSON")
        return UpstreamResponse(resp.status, resp.headers, data, None, outcome)

    async def get_status(
        self, path: str, timeout: float, expect: Container[int] | None = None
    ) -> int:
        """A health probe: the status of a GET, or raises `AttemptFailed`.

        The answer is read so the connection is reused; after a status outside `expect` it
        is closed instead (see `H1Transport.get_status`).
        """
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(self.spec.url + path, allow_redirects=False) as r:
                    if expect is not None and r.status not in expect:
                        r.close()
                        return r.status
                    await r.read()
                    return r.status
        except TimeoutError:
            raise AttemptFailed(Outcome.TIMEOUT, "health check timed out") from None
        except aiohttp.ClientConnectorError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect failed: {e.os_error}") from None
        except aiohttp.ClientError as e:
            raise AttemptFailed(Outcome.RESET, f"health check failed: {e!r}") from None

    async def close(self) -> None:
        await self._session.close()
